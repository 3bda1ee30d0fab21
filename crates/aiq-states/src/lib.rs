//! aiq-states (work in progress).
