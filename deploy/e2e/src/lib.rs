//! End-to-end tests of `deploy/`: the image built offline and run by podman the way the
//! DaemonSet runs it (`tests/image.rs`), pods created through containerd's CRI the way
//! kubelet creates them (`tests/cri.rs`, feature `cri`), and the systemd units checked by
//! systemd and run on a lab node (`tests/systemd.rs`). This library holds what those
//! tests drive: the image build, the manifest read as a pod spec, the
//! locally built pod images, a node's containerd, the units read as their tests need
//! them and (feature `cri`) a CRI client.
#![forbid(unsafe_code)]

pub mod containerd;
#[cfg(feature = "cri")]
pub mod cri;
pub mod daemonset;
pub mod image;
pub mod local_images;
pub mod systemd;
