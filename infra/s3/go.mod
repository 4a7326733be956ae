// Pins the SeaweedFS version K2's prod profile uses as its local S3 server (infra/s3/build-seaweedfs).
// Keep SEAWEEDFS_VERSION in k2_resources/s3_server.py in step with the require below.
module k2.local/infra/s3

go 1.26.6

require github.com/seaweedfs/seaweedfs v0.0.0-20261109003541-7506e5f91cd6

// Copied from SeaweedFS's own go.mod: a dependency's replace directives do not apply to the module that builds it.
replace github.com/tyler-smith/go-bip39 => github.com/cosmos/go-bip39 v1.0.0
