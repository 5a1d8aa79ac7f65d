//! Exists so that cargo accepts this crate as a build-dependency of `profiler`.
#![no_std]
