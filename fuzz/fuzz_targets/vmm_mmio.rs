//! The VMM's virtio-mmio register accesses: reads and writes at arbitrary offsets, widths and
//! values, applied both to a bare register file (`MmioRegs`, with the transport's rules
//! checked after every access) and to a real virtio-net device whose backend is a port of an
//! in-process switch, over 1 MiB of memfd RAM whose first bytes come from the input (so a
//! driver that sets DRIVER_OK starts the switch on fuzzer-written rings). Each input starts
//! with a device reset; the device must keep answering its magic value.

#![no_main]

use std::fs::File;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nix::sys::memfd::{memfd_create, MFdFlags};
use patchbay_fuzz::{switch, Reader};
use patchbay_vmm::virtio::features::F_VERSION_1;
use patchbay_vmm::virtio::mmio::{reg, Action, MmioRegs, MAGIC_VALUE};
use patchbay_vmm::virtio::status::{DEVICE_NEEDS_RESET, DRIVER_OK, FAILED, FEATURES_OK};
use patchbay_vmm::virtio::{Device, NetSpec, VirtioNet};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

const MEM_SIZE: usize = 1 << 20;
const MMIO_BASE: u64 = 0xd000_0000;
const MAX_ACCESSES: usize = 64;

struct Fixture {
    mem: GuestMemoryMmap,
    net: VirtioNet,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let s = switch();
        let fd = memfd_create(c"pb-fuzz-vm", MFdFlags::MFD_CLOEXEC).expect("memfd");
        let file = File::from(fd);
        file.set_len(MEM_SIZE as u64).expect("size memfd");
        let region = MmapRegion::<()>::from_file(FileOffset::new(file, 0), MEM_SIZE).expect("mmap");
        let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("region");
        let mem = GuestMemoryMmap::from_regions(vec![region]).expect("memory");
        let mut spec = NetSpec::new(s.port_socket("p0"));
        spec.connect_timeout = Duration::from_secs(10);
        let net = VirtioNet::new(spec, mem.clone(), None, MMIO_BASE).expect("device connects");
        Fixture { mem, net }
    })
}

/// The transport's rules, checked on the bare register file after each access.
fn check_rules(regs: &MmioRegs, before: &MmioRegs, offset: u64, action: Action) {
    let status = regs.status();
    if status & FEATURES_OK != 0 {
        let f = regs.driver_features();
        assert_eq!(
            f & !regs.device_features(),
            0,
            "FEATURES_OK with unoffered features {f:#x}"
        );
        assert_ne!(f & F_VERSION_1, 0, "FEATURES_OK without VERSION_1");
    }
    for q in regs.queues() {
        assert!(
            q.size == 0 || (q.size.is_power_of_two() && q.size <= q.max_size),
            "{q:?}"
        );
    }
    // A ready queue's configuration changes only through QueueReady or a reset.
    for (old, new) in before.queues().iter().zip(regs.queues()) {
        if old.ready && offset != reg::QUEUE_READY && offset != reg::STATUS {
            assert_eq!(old, new, "ready queue changed by a write at {offset:#x}");
        }
    }
    match action {
        Action::Activate => {
            assert_ne!(status & FEATURES_OK, 0, "activated without FEATURES_OK");
            assert_ne!(status & DRIVER_OK, 0);
            assert_eq!(status & (FAILED | DEVICE_NEEDS_RESET), 0);
        }
        Action::Reset => {
            assert_eq!(status, 0);
            assert!(regs
                .queues()
                .iter()
                .all(|q| !q.ready && q.size == 0 && q.desc == 0));
        }
        Action::None | Action::Notify(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut r = Reader::new(data);
    let ram_len = usize::from(r.u16()) % 0x4000;
    let ram = r.bytes(ram_len);
    f.mem
        .write_slice(ram, GuestAddress(0))
        .expect("fill guest RAM");

    f.net.mmio_write(reg::STATUS, &0u32.to_le_bytes());
    let mut regs = MmioRegs::new(1, f.net.device_features(), &[256, 256]);
    for _ in 0..MAX_ACCESSES {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        let offset = u64::from(r.u16() % 0x180);
        let width = [1usize, 2, 4, 8][usize::from(op >> 1) & 3];
        let mut data = [0u8; 8];
        if op & 1 == 0 {
            f.net.mmio_read(offset, &mut data[..width]);
            regs.read(offset, &mut data[..width]);
        } else {
            let v = r.u64();
            data.copy_from_slice(&v.to_le_bytes());
            let before = regs.clone();
            let action = regs.write(offset, &data[..width]);
            check_rules(&regs, &before, offset, action);
            f.net.mmio_write(offset, &data[..width]);
        }
    }
    let mut magic = [0u8; 4];
    f.net.mmio_read(reg::MAGIC_VALUE, &mut magic);
    assert_eq!(u32::from_le_bytes(magic), MAGIC_VALUE);
});
