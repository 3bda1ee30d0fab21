//! aiq-count (work in progress).
