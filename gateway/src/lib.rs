//! apx gateway library.
