//! The model test (to come).
