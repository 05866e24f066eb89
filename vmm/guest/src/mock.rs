//! Host-side test doubles: an emulated virtio-mmio net device (register file + the device's side
//! of split virtqueues) and a two-port "switch" thread that moves frames between two of them.
use crate::virtio::{self, reg, status, Desc, Transport, UsedElem, NET_HDR_LEN};
use std::ptr::{read_volatile, write_volatile};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A leaked, zeroed allocation (like a `.bss` static in the guest), without touching the stack.
pub fn zeroed_static<T>() -> *mut T {
    let layout = std::alloc::Layout::new::<T>();
    let p = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    assert!(!p.is_null());
    p
}

#[derive(Default, Clone, Copy, Debug)]
pub struct QueueRegs {
    pub num: u32,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    pub ready: bool,
}

#[derive(Debug)]
pub struct Regs {
    pub version: u32,
    pub device_features: u64,
    pub queue_num_max: u32,
    pub mac: [u8; 6],
    pub status: u32,
    pub dev_features_sel: u32,
    pub drv_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub queues: [QueueRegs; 2],
    pub notifies: [u64; 2],
}

pub struct MockDevice {
    pub regs: Mutex<Regs>,
}

impl MockDevice {
    pub fn new(device_features: u64, queue_num_max: u32, mac: [u8; 6]) -> Arc<MockDevice> {
        Arc::new(MockDevice {
            regs: Mutex::new(Regs {
                version: 2,
                device_features,
                queue_num_max,
                mac,
                status: 0,
                dev_features_sel: 0,
                drv_features_sel: 0,
                driver_features: 0,
                queue_sel: 0,
                queues: [QueueRegs::default(); 2],
                notifies: [0; 2],
            }),
        })
    }

    pub fn driver_ok(&self) -> bool {
        self.regs.lock().unwrap().status & status::DRIVER_OK != 0
    }
}

#[derive(Clone)]
pub struct MockTransport(pub Arc<MockDevice>);

fn set_half(v: &mut u64, off: usize, val: u32, high_off: usize) {
    if off == high_off {
        *v = (*v & 0xffff_ffff) | (val as u64) << 32;
    } else {
        *v = (*v & !0xffff_ffff) | val as u64;
    }
}

impl Transport for MockTransport {
    fn read32(&self, off: usize) -> u32 {
        let r = self.0.regs.lock().unwrap();
        let q = &r.queues[(r.queue_sel as usize).min(1)];
        match off {
            reg::MAGIC => virtio::MMIO_MAGIC,
            reg::VERSION => r.version,
            reg::DEVICE_ID => virtio::DEVICE_ID_NET,
            reg::DEVICE_FEATURES => match r.dev_features_sel {
                0 => r.device_features as u32,
                1 => (r.device_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => {
                if r.queue_sel < 2 {
                    r.queue_num_max
                } else {
                    0
                }
            }
            reg::QUEUE_READY => q.ready as u32,
            reg::STATUS => r.status,
            reg::CONFIG_GENERATION => 0,
            _ => panic!("mock: read32 of unexpected register {off:#x}"),
        }
    }

    fn write32(&self, off: usize, val: u32) {
        let mut r = self.0.regs.lock().unwrap();
        let sel = r.queue_sel as usize;
        match off {
            reg::DEVICE_FEATURES_SEL => r.dev_features_sel = val,
            reg::DRIVER_FEATURES_SEL => r.drv_features_sel = val,
            reg::DRIVER_FEATURES => {
                let shift = 32 * r.drv_features_sel.min(1);
                r.driver_features = (r.driver_features & !(0xffff_ffffu64 << shift)) | (val as u64) << shift;
            }
            reg::QUEUE_SEL => r.queue_sel = val,
            reg::QUEUE_NUM => r.queues[sel].num = val,
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => set_half(&mut r.queues[sel].desc, off, val, reg::QUEUE_DESC_HIGH),
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH => {
                set_half(&mut r.queues[sel].driver, off, val, reg::QUEUE_DRIVER_HIGH)
            }
            reg::QUEUE_DEVICE_LOW | reg::QUEUE_DEVICE_HIGH => {
                set_half(&mut r.queues[sel].device, off, val, reg::QUEUE_DEVICE_HIGH)
            }
            reg::QUEUE_READY => r.queues[sel].ready = val == 1,
            reg::QUEUE_NOTIFY => {
                assert_ne!(r.status & status::DRIVER_OK, 0, "notify before DRIVER_OK");
                r.notifies[(val as usize).min(1)] += 1;
            }
            reg::STATUS => {
                if val == 0 {
                    r.status = 0;
                    r.driver_features = 0;
                    r.queues = [QueueRegs::default(); 2];
                } else if val & status::FEATURES_OK != 0 && r.driver_features & !r.device_features != 0 {
                    r.status = val & !status::FEATURES_OK;
                } else {
                    r.status = val;
                }
            }
            _ => panic!("mock: write32 of unexpected register {off:#x}"),
        }
    }

    fn read8(&self, off: usize) -> u8 {
        let r = self.0.regs.lock().unwrap();
        assert!((reg::CONFIG..reg::CONFIG + 6).contains(&off), "mock: read8 {off:#x}");
        r.mac[off - reg::CONFIG]
    }
}

/// The device's side of one split virtqueue (addresses are host pointers in tests).
pub struct DevQueue {
    size: u16,
    desc: *mut Desc,
    avail: *mut u16, // flags, idx, ring[size], used_event
    used: *mut u8,   // flags, idx, ring[size] of UsedElem, avail_event
    last_avail: u16,
    used_idx: u16,
}

impl DevQueue {
    pub fn from_regs(dev: &MockDevice, q: usize) -> DevQueue {
        let r = dev.regs.lock().unwrap();
        let qr = r.queues[q];
        assert!(qr.ready);
        DevQueue {
            size: qr.num as u16,
            desc: qr.desc as *mut Desc,
            avail: qr.driver as *mut u16,
            used: qr.device as *mut u8,
            last_avail: 0,
            used_idx: 0,
        }
    }

    pub fn avail_idx(&self) -> u16 {
        let v = unsafe { read_volatile(self.avail.add(1)) };
        fence(Ordering::Acquire);
        v
    }

    pub fn used_event(&self) -> u16 {
        unsafe { read_volatile(self.avail.add(2 + self.size as usize)) }
    }

    pub fn set_avail_event(&mut self, v: u16) {
        unsafe { write_volatile(self.used.add(4 + 8 * self.size as usize) as *mut u16, v) };
        fence(Ordering::SeqCst);
    }

    pub fn set_used_flags(&mut self, v: u16) {
        unsafe { write_volatile(self.used as *mut u16, v) };
        fence(Ordering::SeqCst);
    }

    pub fn available(&self) -> u16 {
        self.avail_idx().wrapping_sub(self.last_avail)
    }

    pub fn pop_avail(&mut self) -> Option<u16> {
        if self.available() == 0 {
            return None;
        }
        let slot = (self.last_avail % self.size) as usize;
        let head = unsafe { read_volatile(self.avail.add(2 + slot)) };
        self.last_avail = self.last_avail.wrapping_add(1);
        Some(head)
    }

    fn desc(&self, id: u16) -> Desc {
        assert!(id < self.size, "descriptor id {id} out of range");
        unsafe { read_volatile(self.desc.add(id as usize)) }
    }

    /// Pop one available chain and return (head, all its bytes). Does not complete it.
    pub fn pop_frame(&mut self) -> Option<(u16, Vec<u8>)> {
        let head = self.pop_avail()?;
        let mut out = Vec::new();
        let mut id = head;
        loop {
            let d = self.desc(id);
            assert_eq!(d.flags & virtio::VIRTQ_DESC_F_WRITE, 0, "tx descriptor marked device-writable");
            let s = unsafe { std::slice::from_raw_parts(d.addr as *const u8, d.len as usize) };
            out.extend_from_slice(s);
            if d.flags & 1 == 0 {
                break;
            }
            id = d.next;
        }
        Some((head, out))
    }

    pub fn push_used(&mut self, id: u32, len: u32) {
        let slot = (self.used_idx % self.size) as usize;
        unsafe { write_volatile(self.used.add(4 + 8 * slot) as *mut UsedElem, UsedElem { id, len }) };
        self.used_idx = self.used_idx.wrapping_add(1);
    }

    pub fn publish_used(&mut self) {
        fence(Ordering::Release);
        unsafe { write_volatile(self.used.add(2) as *mut u16, self.used_idx) };
    }

    /// Write `frame` into available receive buffers of at most `chunk` bytes each (the first
    /// one starting with the header), returning the used entries without pushing them.
    /// None if there are not enough buffers (nothing consumed then).
    fn fill_rx(&mut self, frame: &[u8], chunk: usize) -> Option<Vec<(u32, u32)>> {
        let mut data = vec![0u8; NET_HDR_LEN];
        data.extend_from_slice(frame);
        // Count buffers needed assuming all descriptors are at least `chunk` bytes.
        let need = data.len().div_ceil(chunk);
        if (self.available() as usize) < need {
            return None;
        }
        data[10..12].copy_from_slice(&(need as u16).to_le_bytes());
        let mut entries = Vec::new();
        for piece in data.chunks(chunk) {
            let head = self.pop_avail().unwrap();
            let d = self.desc(head);
            assert_ne!(d.flags & virtio::VIRTQ_DESC_F_WRITE, 0);
            assert!(d.len as usize >= piece.len());
            unsafe { std::ptr::copy_nonoverlapping(piece.as_ptr(), d.addr as *mut u8, piece.len()) };
            entries.push((head as u32, piece.len() as u32));
        }
        Some(entries)
    }

    /// Deliver a frame (mergeable layout); `publish` updates used.idx once for all its entries.
    pub fn deliver(&mut self, frame: &[u8], chunk: usize, publish: bool) -> bool {
        match self.fill_rx(frame, chunk) {
            Some(entries) => {
                for (id, len) in entries {
                    self.push_used(id, len);
                }
                if publish {
                    self.publish_used();
                }
                true
            }
            None => false,
        }
    }

    pub fn deliver_split(&mut self, frame: &[u8], chunk: usize) -> Vec<(u32, u32)> {
        self.fill_rx(frame, chunk).expect("enough rx buffers")
    }

    pub fn publish_one(&mut self, entries: &mut Vec<(u32, u32)>) {
        let (id, len) = entries.remove(0);
        self.push_used(id, len);
        self.publish_used();
    }
}

/// A two-port switch thread: frames sent on one device arrive on the other. `chunk` limits the
/// bytes per receive buffer (small values exercise num_buffers > 1). Stops when `stop` is set.
pub fn spawn_switch(
    a: Arc<MockDevice>,
    b: Arc<MockDevice>,
    chunk: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        while !(a.driver_ok() && b.driver_ok()) {
            if stop.load(Ordering::Relaxed) {
                return 0;
            }
            std::thread::yield_now();
        }
        let devs = [&a, &b];
        let mut tx: Vec<DevQueue> = devs.iter().map(|d| DevQueue::from_regs(d, 1)).collect();
        let mut rx: Vec<DevQueue> = devs.iter().map(|d| DevQueue::from_regs(d, 0)).collect();
        let mut moved = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut idle = true;
            for from in 0..2 {
                let mut n = 0;
                while let Some((head, bytes)) = tx[from].pop_frame() {
                    tx[from].push_used(head as u32, 0);
                    if rx[1 - from].deliver(&bytes[NET_HDR_LEN..], chunk, true) {
                        moved += 1;
                    }
                    idle = false;
                    n += 1;
                    if n == 64 {
                        break;
                    }
                }
                tx[from].publish_used();
            }
            if idle {
                std::thread::yield_now();
            }
        }
        moved
    })
}
