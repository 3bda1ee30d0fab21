//! aiq-train (work in progress).
