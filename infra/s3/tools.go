//go:build tools

// Package tools pins the SeaweedFS server K2 builds for its S3 warehouse (see build-seaweedfs).
package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
