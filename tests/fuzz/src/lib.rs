//! The parsers under fuzzing, compiled from the project's own source files (`#[path]`)
//! rather than through their crates: `privileged-loader` and `controller` pull in aya,
//! tonic, hyper and tokio, and the instrumented release build of all that took 96 minutes
//! on the shared machine, for code no target reaches. Each module below is the very file
//! the loader or controller compiles; it must stay free of other crate-internal imports
//! (the fuzz build fails if one appears, and CI builds it).
#![allow(dead_code, clippy::all)]

#[path = "../../../privileged-loader/src/conntrack/tuple.rs"]
pub mod tuple_source;
#[path = "../../../privileged-loader/src/conntrack/ctnetlink/wire.rs"]
pub mod wire_source;

/// The loader's conntrack types and its ctnetlink wire parser, at the module paths the
/// files use (`crate::conntrack::...`). The files are declared at the root: a `#[path]`
/// inside an inline module would be resolved under a directory that does not exist.
pub mod conntrack {
    pub use crate::tuple_source as tuple;
    pub use crate::tuple_source::{Entry, Protocol, Tuple, TupleError};

    pub mod ctnetlink {
        pub use crate::wire_source as wire;
    }
}

/// The HTTP/2 header rewriter in front of the loader's socket.
#[path = "../../../privileged-loader/src/api/authority.rs"]
pub mod authority;

/// The loader's re-verification of an `ApplyConfig` request's proof.
#[path = "../../../privileged-loader/src/remote_config/proof.rs"]
pub mod proof;

/// The controller's state directory (`state.json`).
#[path = "../../../controller/src/store/mod.rs"]
pub mod store;

/// Message types of the loader API and the remote-config protocol (prost only: no gRPC
/// services, hence no tonic).
pub mod proto {
    pub mod loader {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/loader.v1.rs"));
        }
    }
    pub mod remoteconfig {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/remoteconfig.v1.rs"));
        }
    }
}
