//! User-side helpers.
