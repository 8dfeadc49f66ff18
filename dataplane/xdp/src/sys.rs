//! The bpf(2) commands xlane uses, with their `union bpf_attr` members as `#[repr(C)]`
//! structs (size-checked against the kernel UAPI layout). The kernel accepts an attr
//! shorter than its union and zero-fills the rest, so each struct stops at the last
//! field we set.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `BPF_MAP_TYPE_XSKMAP`.
pub const MAP_TYPE_XSKMAP: u32 = 17;
/// `BPF_PROG_TYPE_XDP`.
pub const PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP` attach type.
pub const ATTACH_TYPE_XDP: u32 = 37;
/// `BPF_PROG_TYPE_SCHED_CLS` (tc classifier; what tcx runs).
pub const PROG_TYPE_SCHED_CLS: u32 = 3;
/// `BPF_TCX_INGRESS` attach type (Linux 6.6+).
pub const ATTACH_TYPE_TCX_INGRESS: u32 = 46;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}
const _: () = assert!(size_of::<MapCreateAttr>() == 44);

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}
const _: () = assert!(size_of::<MapElemAttr>() == 32);

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}
const _: () = assert!(size_of::<ProgLoadAttr>() == 72);

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}
const _: () = assert!(size_of::<LinkCreateAttr>() == 16);

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
}
const _: () = assert!(size_of::<TestRunAttr>() == 72);

/// Issue one bpf(2) command.
///
/// # Safety
/// `attr` must be the attr struct of `cmd`, and every pointer it holds must be valid for
/// the access the command makes for the duration of the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    let size = u32::try_from(size_of::<T>()).expect("attr structs are small");
    // SAFETY: the caller guarantees attr matches cmd and its pointers are valid; the
    // kernel reads (and for some commands writes) at most `size` bytes of it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr).cast::<libc::c_void>(), size) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn new_fd(ret: libc::c_long) -> OwnedFd {
    let fd = libc::c_int::try_from(ret).expect("the kernel returns fds as int");
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    // The kernel accepts [A-Za-z0-9_.] and needs a NUL within 16 bytes.
    for (o, b) in out.iter_mut().zip(name.bytes().filter(|b| b.is_ascii_alphanumeric() || *b == b'_').take(15)) {
        *o = b;
    }
    out
}

fn raw(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("valid descriptors are non-negative")
}

/// Create an XSKMAP with `entries` slots (one per receive queue).
///
/// # Errors
/// The kernel's error (EPERM without CAP_BPF, …).
pub fn create_xskmap(name: &str, entries: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        map_name: name16(name),
        ..Default::default()
    };
    // SAFETY: a MAP_CREATE attr holding no pointers.
    unsafe { bpf(BPF_MAP_CREATE, &mut attr) }.map(new_fd)
}

/// Set `map[key] = value_fd` (an AF_XDP socket in an XSKMAP).
///
/// # Errors
/// The kernel's error.
pub fn map_update_fd(map: BorrowedFd<'_>, key: u32, value_fd: BorrowedFd<'_>) -> io::Result<()> {
    let value = u32::try_from(value_fd.as_raw_fd()).expect("valid descriptors are non-negative");
    let mut attr = MapElemAttr {
        map_fd: raw(map),
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_ref(&value) as u64,
        ..Default::default()
    };
    // SAFETY: key and value point at live u32s on this stack frame for the call.
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(drop)
}

/// Remove `map[key]`.
///
/// # Errors
/// The kernel's error (ENOENT if absent).
pub fn map_delete(map: BorrowedFd<'_>, key: u32) -> io::Result<()> {
    let mut attr = MapElemAttr { map_fd: raw(map), key: std::ptr::from_ref(&key) as u64, ..Default::default() };
    // SAFETY: key points at a live u32 for the call.
    unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut attr) }.map(drop)
}

/// A program the verifier rejected, with its log.
#[derive(Debug, thiserror::Error)]
#[error("BPF_PROG_LOAD of {name}: {source}\nverifier log:\n{log}")]
pub struct LoadError {
    /// Program name.
    pub name: String,
    /// The errno.
    #[source]
    pub source: io::Error,
    /// The verifier's log (empty if it produced none).
    pub log: String,
}

/// Load an XDP program (raw 8-byte instructions).
///
/// # Errors
/// [`LoadError`] with the verifier log.
pub fn load_xdp(name: &str, insns: &[u64]) -> Result<OwnedFd, LoadError> {
    load(PROG_TYPE_XDP, ATTACH_TYPE_XDP, 0, name, insns)
}

/// [`load_xdp`] for a program that handles multi-buffer packets (`BPF_F_XDP_HAS_FRAGS`,
/// Linux 5.18+): it reads only the first buffer's headers, so a jumbo frame split over
/// pages passes it like any other, and a veth takes an MTU beyond one page.
///
/// # Errors
/// [`LoadError`] with the verifier log.
pub fn load_xdp_frags(name: &str, insns: &[u64]) -> Result<OwnedFd, LoadError> {
    load(PROG_TYPE_XDP, ATTACH_TYPE_XDP, BPF_F_XDP_HAS_FRAGS, name, insns)
}

/// Load a tc classifier for tcx ingress (raw 8-byte instructions).
///
/// # Errors
/// [`LoadError`] with the verifier log.
pub fn load_tcx_ingress(name: &str, insns: &[u64]) -> Result<OwnedFd, LoadError> {
    load(PROG_TYPE_SCHED_CLS, ATTACH_TYPE_TCX_INGRESS, 0, name, insns)
}

/// `prog_flags` bit: the XDP program handles multi-buffer packets.
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;

fn load(
    prog_type: u32,
    expected_attach_type: u32,
    prog_flags: u32,
    name: &str,
    insns: &[u64],
) -> Result<OwnedFd, LoadError> {
    const LICENSE: &CStr = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: u32::try_from(insns.len()).expect("programs are small"),
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level: 1,
        log_size: u32::try_from(log.len()).expect("64 KiB"),
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name16(name),
        expected_attach_type,
        prog_flags,
        ..Default::default()
    };
    // SAFETY: insns, license and log_buf point at live buffers of the stated sizes that
    // outlive the call; the kernel writes at most log_size bytes into log.
    match unsafe { bpf(BPF_PROG_LOAD, &mut attr) } {
        Ok(fd) => Ok(new_fd(fd)),
        Err(source) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(LoadError { name: name.to_owned(), source, log: String::from_utf8_lossy(&log[..end]).into_owned() })
        }
    }
}

/// Attach `prog` to the interface with a BPF link (`flags`: 2 = generic/SKB, 4 =
/// native/driver). The program detaches when the returned link fd is closed — also when
/// the process dies.
///
/// # Errors
/// The kernel's error.
pub fn link_xdp(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr { prog_fd: raw(prog), target_ifindex: ifindex, attach_type: ATTACH_TYPE_XDP, flags };
    // SAFETY: a LINK_CREATE attr holding no pointers.
    unsafe { bpf(BPF_LINK_CREATE, &mut attr) }.map(new_fd)
}

/// Detach a link's program from its target now (`BPF_LINK_DETACH`, Linux 5.9+); the
/// link stays open, defunct, until its fd is closed.
///
/// # Errors
/// The kernel's error.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkDetachAttr { link_fd: raw(link) };
    // SAFETY: a LINK_DETACH attr holding no pointers.
    unsafe { bpf(BPF_LINK_DETACH, &mut attr) }.map(drop)
}

/// `union bpf_attr` for `BPF_LINK_DETACH`.
#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// Attach a tc classifier to the interface's ingress through tcx (Linux 6.6+), after the
/// programs already there. It detaches when the returned link fd is closed — also when
/// the process dies.
///
/// # Errors
/// The kernel's error (EINVAL before 6.6: no tcx attach type).
pub fn link_tcx_ingress(prog: BorrowedFd<'_>, ifindex: u32) -> io::Result<OwnedFd> {
    let mut attr =
        LinkCreateAttr { prog_fd: raw(prog), target_ifindex: ifindex, attach_type: ATTACH_TYPE_TCX_INGRESS, flags: 0 };
    // SAFETY: a LINK_CREATE attr holding no pointers (the tcx member, zero-filled by the
    // kernel, means "append, any revision").
    unsafe { bpf(BPF_LINK_CREATE, &mut attr) }.map(new_fd)
}

/// Run an XDP program once on `frame` (BPF_PROG_TEST_RUN) and return its verdict.
///
/// # Errors
/// The kernel's error.
pub fn test_run_xdp(prog: BorrowedFd<'_>, frame: &[u8]) -> io::Result<u32> {
    test_run(prog, frame)
}

/// Run a program once on `frame` (BPF_PROG_TEST_RUN: XDP, or a tc classifier on an skb
/// built from it) and return its return value.
///
/// # Errors
/// The kernel's error.
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8]) -> io::Result<u32> {
    let mut out = vec![0u8; frame.len() + 512];
    let mut attr = TestRunAttr {
        prog_fd: raw(prog),
        data_size_in: u32::try_from(frame.len()).expect("frames are small"),
        data_size_out: u32::try_from(out.len()).expect("frames are small"),
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: data_in/data_out point at live buffers of the stated sizes for the call.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    Ok(attr.retval)
}

/// `setsockopt(2)` with an `int` value.
///
/// # Errors
/// The kernel's error.
pub fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    setsockopt(fd, level, name, &value)
}

/// An IPv4 socket address as the kernel takes it.
#[must_use]
pub(crate) fn sockaddr_in(ip: std::net::Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("2"),
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    }
}

/// A non-blocking UDP socket on interface `ifname` (`SO_BINDTODEVICE`), given its
/// options by `configure`, then bound to `ip`:`port`.
///
/// # Errors
/// The failing step's name and the kernel's error.
pub(crate) fn udp_socket(
    ifname: &str,
    ip: std::net::Ipv4Addr,
    port: u16,
    configure: impl FnOnce(RawFd) -> Result<(), (&'static str, io::Error)>,
) -> Result<OwnedFd, (&'static str, io::Error)> {
    // SAFETY: plain socket(2); the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(("socket(AF_INET, SOCK_DGRAM)", io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this descriptor; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let s = fd.as_raw_fd();
    let name = ifname.as_bytes();
    let len =
        libc::socklen_t::try_from(name.len()).map_err(|_| ("SO_BINDTODEVICE", io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: `name` is live for the call and `len` is its length (the kernel copies it).
    if unsafe { libc::setsockopt(s, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, name.as_ptr().cast(), len) } < 0 {
        return Err(("SO_BINDTODEVICE", io::Error::last_os_error()));
    }
    configure(s)?;
    let addr = sockaddr_in(ip, port);
    let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).expect("16");
    // SAFETY: `addr` is a live sockaddr_in and `len` its size.
    if unsafe { libc::bind(s, std::ptr::from_ref(&addr).cast(), len) } < 0 {
        return Err(("bind", io::Error::last_os_error()));
    }
    Ok(fd)
}

/// `getsockopt(2)` of a plain-data value (an int, a `#[repr(C)]` struct of the UAPI, an
/// array of counters), which the kernel must fill whole.
///
/// # Errors
/// The kernel's error; `Unsupported` if it wrote another size (an option laid out
/// otherwise by this kernel).
pub(crate) fn getsockopt<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    let mut value = std::mem::MaybeUninit::<T>::uninit();
    let size = size_of::<T>();
    let mut len = libc::socklen_t::try_from(size).expect("option sizes fit");
    // SAFETY: `value` is writable for `len` bytes; the kernel writes at most `len` bytes
    // and reports how many.
    if unsafe { libc::getsockopt(fd, level, name, value.as_mut_ptr().cast(), &raw mut len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size {
        return Err(io::Error::new(io::ErrorKind::Unsupported, format!("option {name}: {len} bytes, not {size}")));
    }
    // SAFETY: the kernel wrote all `size` bytes of it, and `T` is plain data.
    Ok(unsafe { value.assume_init() })
}

/// `setsockopt(2)` with a plain-data value (an int, a `#[repr(C)]` struct of the UAPI).
///
/// # Errors
/// The kernel's error.
pub(crate) fn setsockopt<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<T>()).expect("option sizes fit");
    // SAFETY: `value` points to a live `T` of `len` bytes for the duration of the call.
    let r = unsafe { libc::setsockopt(fd, level, name, std::ptr::from_ref(value).cast(), len) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Ask for a socket buffer of `bytes`: `force` (`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`,
/// beyond `net.core.*mem_max`, needs `CAP_NET_ADMIN`), else `plain` capped by the sysctl.
///
/// # Errors
/// The kernel's error for `plain`.
pub(crate) fn set_socket_buffer(
    fd: RawFd,
    force: libc::c_int,
    plain: libc::c_int,
    bytes: libc::c_int,
) -> io::Result<()> {
    if setsockopt_int(fd, libc::SOL_SOCKET, force, bytes).is_ok() {
        return Ok(());
    }
    setsockopt_int(fd, libc::SOL_SOCKET, plain, bytes)
}

/// A memfd of `len` bytes (close-on-exec; sealed against shrinking, so a mapping of it
/// can never lose its pages under it).
///
/// # Errors
/// The kernel's error.
pub(crate) fn memfd(name: &std::ffi::CStr, len: usize) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned this descriptor to us; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a plain syscall on a descriptor we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    // SAFETY: a plain syscall on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The size of the file behind `fd`.
///
/// # Errors
/// The kernel's error.
pub(crate) fn file_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a writable stat buffer for the duration of the call.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    u64::try_from(st.st_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// A shared read-write mapping of a descriptor's memory (a socket's rings, a memfd),
/// unmapped on drop.
pub(crate) struct SharedMapping {
    base: std::ptr::NonNull<u8>,
    len: usize,
}

impl SharedMapping {
    /// Map `len` bytes of `fd` from page offset `pgoff`, faulted in at once (the rings
    /// are touched on the hot path).
    ///
    /// # Errors
    /// The kernel's error (EINVAL: no memory of that size there).
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize, pgoff: libc::off_t) -> io::Result<Self> {
        // SAFETY: a new shared mapping with no address hint; the result is checked
        // before use and owned by the value returned.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                pgoff,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { base: std::ptr::NonNull::new(p.cast()).expect("mmap never returns null on success"), len })
    }

    /// The first byte.
    pub(crate) fn base(&self) -> std::ptr::NonNull<u8> {
        self.base
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly a mapping made in `map`, unmapped only here;
        // every pointer into it belongs to the value that owns this mapping.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
