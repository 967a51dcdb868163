//! The real control plane harness and end-to-end tests (work in progress).
