//! Registry client (filled in next).
