//! Layer tars (filled in next).
