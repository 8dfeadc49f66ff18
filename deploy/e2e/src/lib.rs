//! End-to-end tests of `deploy/`: the image built offline and run by podman the way the
//! DaemonSet runs it (`tests/image.rs`), and pods created through containerd's CRI the way
//! kubelet creates them (`tests/cri.rs`, feature `cri`). This library holds what those
//! tests drive: a private podman, the image build, the manifest read as a pod spec.
#![forbid(unsafe_code)]

pub mod daemonset;
pub mod image;
pub mod podman;
