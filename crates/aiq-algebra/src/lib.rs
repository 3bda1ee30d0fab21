//! aiq-algebra (work in progress).
