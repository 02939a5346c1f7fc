//! Unit and model tests of the repository against the in-memory twin.
