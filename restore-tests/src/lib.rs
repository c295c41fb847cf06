//! Helpers for the end-to-end tests: run the real binaries, build awkward trees, compare trees.
