//! tiny_http 0.12.0 with authd's patch series (`series`), built from the registry's
//! pristine crate by `build.rs`. No upstream code is committed: only the patches.
#![forbid(unsafe_code)]
#![allow(warnings, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/tiny_http.rs"));
