//! test UA
