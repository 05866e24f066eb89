//! Guest memory a frontend hands over is untrusted: a file shorter than the region it claims,
//! a file shrunk after the switch mapped it, or more address space than a port may have must
//! cost that port its connection at most, never the switch process (SIGBUS) or other ports.
//!
//! Its own test binary: on a switch without the guard, the shrunk-memory test kills the whole
//! process, which must not take other tests with it.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::sys::memfd::{memfd_create, MFdFlags};
use patchbay_switch::daemon::Daemon;
use patchbay_tests::frames::*;
use patchbay_tests::frontend::*;
use patchbay_tests::switch::{
    access_ports, connect, counters, eventually, forwards, start_switch, TestDir,
};
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostUserMemoryRegionInfo;

fn memfd(len: u64, sealed: bool) -> File {
    let mut flags = MFdFlags::MFD_CLOEXEC;
    if sealed {
        flags |= MFdFlags::MFD_ALLOW_SEALING;
    }
    let f = File::from(memfd_create(c"hostile", flags).expect("memfd"));
    f.set_len(len).expect("size the memfd");
    f
}

/// Announces `file` as guest memory at `gpa` with `size` bytes (whatever the file's size).
fn add_region(p: &mut TestPort, file: &File, gpa: u64, size: u64) -> vhost::Result<()> {
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: 0x7000_0000_0000 + gpa,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    };
    p.vhost().add_mem_region(&region).map(|_| ())
}

/// Where the extra regions go: past the test frontend's own memory.
const EXTRA_GPA: u64 = 1 << 40;

fn three_ports(
    name: &str,
    configure: impl FnOnce(&mut patchbay_switch::config::Config),
) -> (TestDir, Daemon) {
    let dir = TestDir::new(name);
    let d = start_switch(
        &dir.path,
        access_ports(&dir.path, &[("hostile", 1), ("b", 1), ("c", 1)]),
        configure,
    );
    (dir, d)
}

#[test]
fn a_memory_file_shorter_than_its_region_is_refused() {
    let (dir, d) = three_ports("short-memfd", |_| {});
    let mut hostile = connect(&dir, "hostile");
    let (mut b, mut c) = (connect(&dir, "b"), connect(&dir, "c"));
    let before = counters(&d, "hostile").protocol_errors;
    let short = memfd(4096, false);
    assert!(
        add_region(&mut hostile, &short, EXTRA_GPA, 1 << 20).is_err(),
        "a 4 KiB file announced as a 1 MiB region must be refused"
    );
    // Counted by the connection thread once the refusal is sent.
    eventually("the refusal counted as a protocol error", || {
        counters(&d, "hostile").protocol_errors == before + 1
    });
    // The port and the others carry on.
    forwards(&mut b, &mut c, &frame(BROADCAST, mac(2), 1, 100));
    forwards(&mut hostile, &mut b, &frame(mac(2), mac(1), 2, 100));
    d.shutdown();
}

#[test]
fn a_memory_file_shrunk_after_mapping_fails_its_port_not_the_switch() {
    let (dir, d) = three_ports("shrunk-memfd", |_| {});
    let mut hostile = connect(&dir, "hostile");
    let (mut b, mut c) = (connect(&dir, "b"), connect(&dir, "c"));
    // An extra region the switch maps, holding one frame for the hostile guest's TX ring.
    let extra = memfd(1 << 20, false);
    add_region(&mut hostile, &extra, EXTRA_GPA, 1 << 20).expect("a well-sized region maps");
    let f = frame(BROADCAST, mac(1), 1, 100);
    let mut bytes = vec![0u8; hostile.header_len()];
    bytes.extend_from_slice(&f);
    std::os::unix::fs::FileExt::write_all_at(&extra, &bytes, 0).expect("write the frame");
    hostile
        .raw_tx()
        .set_desc(0, RawDesc::new(EXTRA_GPA, bytes.len() as u32, 0))
        .unwrap();
    // Now pull the memory out from under the switch, then ask it to read the frame.
    extra.set_len(0).expect("shrink");
    hostile.raw_tx().push(0).unwrap();
    hostile.raw_tx().kick().unwrap();
    // The switch survives (this process would be dead otherwise), drops the port's
    // connection, counts the fault, and the other ports keep forwarding.
    eventually("the fault is counted", || {
        counters(&d, "hostile").memory_faults == 1
    });
    eventually("the faulty connection is closed", || {
        d.switch.port_by_name("hostile").unwrap().link().is_none()
    });
    for seq in 0..10 {
        forwards(&mut b, &mut c, &frame(mac(3), mac(2), seq, 100));
    }
    // The port itself is usable again by a new frontend.
    drop(hostile);
    let mut again = connect(&dir, "hostile");
    forwards(&mut again, &mut c, &frame(mac(3), mac(9), 99, 100));
    d.shutdown();
}

#[test]
fn sealed_memory_maps_and_cannot_shrink() {
    let (dir, d) = three_ports("sealed-memfd", |_| {});
    let mut hostile = connect(&dir, "hostile");
    let sealed = memfd(1 << 20, true);
    nix::fcntl::fcntl(
        &sealed,
        nix::fcntl::FcntlArg::F_ADD_SEALS(
            nix::fcntl::SealFlag::F_SEAL_SHRINK | nix::fcntl::SealFlag::F_SEAL_GROW,
        ),
    )
    .expect("seal");
    add_region(&mut hostile, &sealed, EXTRA_GPA, 1 << 20).expect("sealed memory maps");
    assert!(
        sealed.set_len(0).is_err(),
        "the kernel refuses to shrink it"
    );
    d.shutdown();
}

#[test]
fn guest_memory_beyond_the_port_limit_is_refused() {
    let (dir, d) = three_ports("mem-limit", |c| c.settings.max_guest_memory_gib = 1);
    let mut hostile = connect(&dir, "hostile");
    let mut b = connect(&dir, "b");
    let before = counters(&d, "hostile").protocol_errors;
    // Sparse files: no memory is used, only address space.
    let big = memfd(2 << 30, false);
    assert!(
        add_region(&mut hostile, &big, EXTRA_GPA, 2 << 30).is_err(),
        "2 GiB on a port limited to 1 GiB must be refused"
    );
    // Counted by the connection thread once the refusal is sent.
    eventually("the refusal counted as a protocol error", || {
        counters(&d, "hostile").protocol_errors == before + 1
    });
    let fits = memfd(512 << 20, false);
    add_region(&mut hostile, &fits, EXTRA_GPA, 512 << 20).expect("within the limit");
    forwards(&mut hostile, &mut b, &frame(mac(2), mac(1), 1, 100));
    d.shutdown();
}
