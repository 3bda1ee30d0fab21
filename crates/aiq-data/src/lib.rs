//! aiq-data (work in progress).
