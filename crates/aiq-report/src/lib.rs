//! aiq-report (work in progress).
