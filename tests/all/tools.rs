//! The shipped example tools, run through `guild run` against real directories.
