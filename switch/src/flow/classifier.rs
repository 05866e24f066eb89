//! Tuple-space-search classifier (being written).
