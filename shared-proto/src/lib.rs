//! Generated code for the project's gRPC APIs. Nothing but the protos lives here.

/// The privileged loader's API (`loader.v1`), served on a unix socket.
pub mod loader {
    pub mod v1 {
        tonic::include_proto!("loader.v1");
        /// Encoded file descriptor set, for gRPC server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("loader_v1_descriptor");
    }
}

/// The remote-config protocol (`remoteconfig.v1`).
pub mod remoteconfig {
    pub mod v1 {
        tonic::include_proto!("remoteconfig.v1");
        /// Encoded file descriptor set, for gRPC server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            tonic::include_file_descriptor_set!("remoteconfig_v1_descriptor");
    }
}
