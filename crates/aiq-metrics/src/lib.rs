//! aiq-metrics (work in progress).
