//! (c) tap + vhost-net: what this machine allows. The forwarder for (c) was not built:
//! the kernel here has `# CONFIG_VHOST_NET is not set` and no module support
//! (`# CONFIG_MODULES is not set`), so there is no /dev/vhost-net. This probe records
//! that through the `vhost` crate itself, so a re-run on another kernel says at once
//! whether (c) can be measured there.

use std::sync::Arc;
use vhost::VhostBackend as _;
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub fn probe() -> anyhow::Result<()> {
    let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])?);
    match vhost::vhost_kern::net::Net::new(mem) {
        Ok(net) => {
            net.set_owner()?;
            let f = net.get_features()?;
            println!("vhost-net available: features {f:#x}");
        }
        Err(e) => {
            let config = std::process::Command::new("sh")
                .args(["-c", "zcat /proc/config.gz 2>/dev/null | grep -E 'CONFIG_VHOST_NET|CONFIG_MODULES='"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            println!("vhost-net unavailable: {e:?}\n{}", config.trim());
        }
    }
    Ok(())
}
