#!/usr/bin/env python3
"""Writes the committed seed corpus (fuzz/corpus/<target>/): a handful of meaningful inputs per
target, in each target's input format (see the doc comment at the top of each target).
Run from anywhere: python3 fuzz/make_seeds.py"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def tcp_frame(vlan=None, payload=b"hello, fuzzer"):
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 5 << 4, 0x18, 1000, 0, 0) + payload
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    eth = bytes([0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1])
    if vlan is not None:
        eth += struct.pack("!HH", 0x8100, (5 << 13) | vlan)
    return eth + struct.pack("!H", 0x0800) + ip + tcp


def udp_frame():
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    udp = struct.pack("!HHHH", 5000, 53, 8 + 4, 0) + b"ping"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return bytes([0xFF] * 6 + [0x52, 0x54, 0, 0, 0, 1]) + b"\x08\x00" + ip + udp


# --- tx_chain / rx_reserve: ring layout, then guest memory from address 0 -------------------
# Ring of 8 at desc 0x0, avail 0x80, used 0x100; buffers from 0x200.
LAYOUT = bytes([3]) + struct.pack("<HHH", 0x0, 0x80 // 2, 0x100 // 4)
F_NEXT, F_WRITE = 1, 2


def memory(descs, heads, size=0x400, extra=()):
    mem = bytearray(size)
    for i, (addr, ln, flags, nxt) in enumerate(descs):
        mem[16 * i:16 * i + 16] = struct.pack("<QIHH", addr, ln, flags, nxt)
    mem[0x80:0x84] = struct.pack("<HH", 0, len(heads))
    for i, h in enumerate(heads):
        mem[0x84 + 2 * i:0x86 + 2 * i] = struct.pack("<H", h)
    for addr, data in extra:
        mem[addr:addr + len(data)] = data
    return bytes(mem)


frame = tcp_frame()
hdr = bytes(12)
write("tx_chain", "one-descriptor",
      LAYOUT + bytes([0]) + struct.pack("<H", 1500)
      + memory([(0x200, 12 + len(frame), 0, 0)], [0], extra=[(0x200, hdr + frame)]))
write("tx_chain", "header-then-frame",
      LAYOUT + bytes([0]) + struct.pack("<H", 1500)
      + memory([(0x200, 12, F_NEXT, 1), (0x300, len(frame), 0, 0)], [0],
               extra=[(0x300, frame)]))
write("tx_chain", "legacy-header-two-frames",
      LAYOUT + bytes([1]) + struct.pack("<H", 1500)
      + memory([(0x200, 10 + 60, 0, 0), (0x280, 10 + 60, 0, 0)], [0, 1]))
write("tx_chain", "loop", LAYOUT + bytes([0]) + struct.pack("<H", 1500)
      + memory([(0x200, 40, F_NEXT, 1), (0x300, 40, F_NEXT, 0)], [0]))

rx_head = LAYOUT + bytes([0x0F]) + struct.pack("<HHHH", 1514, 60, 9000, 64)
write("rx_reserve", "two-buffers",
      rx_head + memory([(0x200, 0x100, F_WRITE, 0), (0x300, 0x100, F_WRITE, 0)], [0, 1]))
write("rx_reserve", "good-then-bad",
      rx_head + memory([(0x200, 0x100, F_WRITE, 0), (0x300, 0x100, 0, 0)], [0, 1]))
write("rx_reserve", "chained-buffer",
      rx_head + memory([(0x200, 0x80, F_WRITE | F_NEXT, 1), (0x300, 0x80, F_WRITE, 0)], [0]))

# --- header_actions: two action lists, then the frame ---------------------------------------
def actions(*acts):
    return bytes([len(acts)]) + b"".join(acts)


SET_NW_SRC = bytes([10, 192, 0, 2, 7][:1]) + bytes([7, 2, 0, 192])
SET_TP_DST = bytes([14]) + struct.pack("<H", 8080)
OUTPUT1 = bytes([0]) + struct.pack("<H", 1)
STRIP = bytes([6])
SET_VID = bytes([4]) + struct.pack("<H", 42)
DEC_TTL = bytes([15])
RESUBMIT = bytes([18])
NORMAL = bytes([3])
write("header_actions", "nat-tcp",
      actions(SET_NW_SRC, SET_TP_DST, DEC_TTL, OUTPUT1) + actions() + tcp_frame())
write("header_actions", "retag-resubmit",
      actions(STRIP, SET_VID, RESUBMIT) + actions(DEC_TTL, NORMAL) + tcp_frame(vlan=10))
write("header_actions", "udp-broadcast",
      actions(bytes([13]) + struct.pack("<H", 9999), OUTPUT1) + actions() + udp_frame())

# --- parse_flow: syntax byte + a flow from the ovs-flows corpus ------------------------------
with open(os.path.join(ROOT, "switch", "tests", "data", "ovs-flows.txt")) as f:
    rules = [l.rstrip("\n") for l in f if l.strip() and not l.lstrip().startswith("#")]
picked = [r for r in rules if not r.startswith("!")][:12] + [r for r in rules if r.startswith("!")][:3]
for i, r in enumerate(picked):
    syntax = 1 if r.startswith("~ ") else 0
    text = r[2:] if syntax else r.split(" ", 1)[1] if r.startswith("!") else r
    write("parse_flow", "flow-%02d" % i, bytes([syntax]) + text.encode())
write("parse_flow", "mod-flows", bytes([2]) + b"in_port=1,ip,nw_dst=10.0.0.0/8 actions=mod_nw_tos:16,output:2")

# --- control_json: request lines from docs/control-protocol.md -------------------------------
requests = [
    '{"version":1,"command":"hello"}',
    '{"version":1,"command":"show-ports"}',
    '{"version":1,"command":"show-macs","vlan":10}',
    '{"version":1,"command":"show-switch"}',
    '{"version":1,"command":"add-port","port":{"name":"vm2","socket":"/tmp/pb/vm2.sock","vlan":20}}\n'
    '{"version":1,"command":"del-port","name":"vm2"}',
    '{"version":1,"command":"set-vlan","name":"p1","vlan":{"mode":"trunk","trunks":"10,20-29"}}',
    '{"version":1,"command":"set-vlan","name":"p0","vlan":{"mode":"access","vlan":5000}}',
    '{"version":1,"command":"add-flows","flows":[{"line":"priority=100,in_port=1,actions=output:2"}]}\n'
    '{"version":1,"command":"dump-flows"}',
    '{"version":1,"command":"show-tunnel"}',
    '{"version":2,"command":"hello"}',
]
for i, r in enumerate(requests):
    write("control_json", "request-%02d" % i, r.encode())

# --- vmm_mmio: RAM length + RAM, then accesses (op, offset, [value]) -------------------------
def rd(off):
    return bytes([2 << 1]) + struct.pack("<H", off)  # 4-byte read


def wr(off, v):
    return bytes([(2 << 1) | 1]) + struct.pack("<HQ", off, v)


init = (rd(0x0) + rd(0x4) + rd(0x8) + wr(0x70, 1) + wr(0x70, 3)
        + wr(0x14, 0) + rd(0x10) + wr(0x14, 1) + rd(0x10)
        + wr(0x24, 0) + wr(0x20, (1 << 5) | (1 << 16)) + wr(0x24, 1) + wr(0x20, 1)
        + wr(0x70, 0xB) + rd(0x70))
queues = b""
for q, base in ((0, 0x1000), (1, 0x4000)):
    queues += (wr(0x30, q) + rd(0x34) + wr(0x38, 8) + wr(0x80, base) + wr(0x84, 0)
               + wr(0x90, base + 0x1000) + wr(0x94, 0) + wr(0xA0, base + 0x2000)
               + wr(0xA4, 0) + wr(0x44, 1))
write("vmm_mmio", "driver-init", struct.pack("<H", 0) + init)
write("vmm_mmio", "driver-ok", struct.pack("<H", 0) + init + queues + wr(0x70, 0xF)
      + wr(0x50, 1) + rd(0x60) + wr(0x70, 0))
write("vmm_mmio", "config-space", struct.pack("<H", 0) + rd(0x100) + bytes([0 << 1]) + struct.pack("<H", 0x105)
      + rd(0xFC))

# --- vmm_loader: small ELFs and a bzImage header ---------------------------------------------
def elf(paddr, vaddr, code, memsz):
    eh = bytearray(64)
    eh[0:4] = b"\x7fELF"
    eh[4], eh[5], eh[6] = 2, 1, 1
    struct.pack_into("<HHIQQQIHHHHHH", eh, 16, 2, 62, 1, vaddr, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, vaddr, paddr, len(code), memsz, 0x1000)
    return bytes(eh) + ph + bytes(0x1000 - 64 - 56) + code


hlt = bytes([0xF4, 0xEB, 0xFD])
write("vmm_loader", "guest-elf", elf(0x200000, 0x200000, hlt, 0x3000))
write("vmm_loader", "vmlinux-elf", elf(0x1000000, 0xFFFFFFFF81000000, hlt, 0x1000))
bz = bytearray(0x800)
bz[0x1F1] = 1  # setup_sects
struct.pack_into("<H", bz, 0x1FE, 0xAA55)
bz[0x202:0x206] = b"HdrS"
struct.pack_into("<H", bz, 0x206, 0x020F)  # protocol 2.15
struct.pack_into("<H", bz, 0x236, 1)  # xloadflags: XLF_KERNEL_64
struct.pack_into("<I", bz, 0x238, 2048)  # cmdline_size
struct.pack_into("<Q", bz, 0x258, 0x1000000)  # pref_address
struct.pack_into("<I", bz, 0x260, 0x100000)  # init_size
bz[0x400:0x403] = hlt
write("vmm_loader", "bzimage", bytes(bz))

# --- vhost_messages: (request, flags, body length, fd spec, [fds], body) ---------------------
def msg(req, body=b"", fds=b"", nfds=0, reply=False):
    return (bytes([req, 1 if reply else 0]) + struct.pack("<H", len(body))
            + bytes([nfds]) + fds + body)


def memfd(pages, content=b""):
    return bytes([1 | (pages - 1) << 1]) + struct.pack("<H", len(content)) + content


EVENTFD = bytes([0])
GET_FEATURES, SET_FEATURES, SET_OWNER, SET_MEM_TABLE = 1, 2, 3, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES = 12, 13, 15, 16
SET_VRING_ENABLE, GET_CONFIG = 18, 24
ring = memory([(0x200, 12 + len(frame), 0, 0)], [0], size=0x300, extra=[(0x200, hdr + frame)])
region = struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 0x4000, 0x7F0000000000, 0)
addr = struct.pack("<IIQQQQ", 1, 0, 0x7F0000000000, 0x7F0000000100, 0x7F0000000080, 0)
setup = (msg(SET_OWNER) + msg(GET_FEATURES) + msg(GET_PROTOCOL_FEATURES)
         + msg(SET_PROTOCOL_FEATURES, struct.pack("<Q", 0x3)) + msg(SET_FEATURES, struct.pack("<Q", (1 << 32) | (1 << 30)))
         + msg(SET_MEM_TABLE, region, memfd(4, ring), 1, reply=True)
         + msg(SET_VRING_NUM, struct.pack("<II", 1, 8)) + msg(SET_VRING_ADDR, addr)
         + msg(SET_VRING_BASE, struct.pack("<II", 1, 0))
         + msg(SET_VRING_CALL, struct.pack("<Q", 1), EVENTFD, 1)
         + msg(SET_VRING_KICK, struct.pack("<Q", 1), EVENTFD, 1)
         + msg(SET_VRING_ENABLE, struct.pack("<II", 1, 1)))
write("vhost_messages", "get-features", msg(GET_FEATURES))
write("vhost_messages", "tx-ring-up", setup)
write("vhost_messages", "tx-ring-up-then-stop", setup + msg(GET_VRING_BASE, struct.pack("<II", 1, 0)))
write("vhost_messages", "get-config", msg(SET_OWNER) + msg(GET_CONFIG, struct.pack("<III", 0, 12, 0) + bytes(12)))

# --- decap: outer source address + VXLAN header + inner frame --------------------------------
vx = struct.pack("!BBBBI", 0x08, 0, 0, 0, 1 << 8)
write("decap", "vni1-from-known-vtep", bytes([10, 0, 0, 3]) + vx + tcp_frame())
write("decap", "vni0-from-unknown", bytes([192, 0, 2, 9]) + struct.pack("!BBBBI", 0x08, 0, 0, 0, 0) + udp_frame())
write("decap", "bad-flags", bytes([10, 0, 0, 2]) + struct.pack("!BBBBI", 0x00, 0, 0, 0, 0) + udp_frame())

# --- port_security: a flags byte (bit 0: a checksum offload follows, start and offset as two
# little-endian u16), then the start of a frame from the port (52:54:00:00:00:01, 10.0.0.1) --
def arp_reply(spa):
    mac = bytes([0x52, 0x54, 0, 0, 0, 1])
    return (bytes([0xFF] * 6) + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2)
            + mac + bytes(spa) + bytes(6) + bytes([10, 0, 0, 9]))


def neighbour_advert(target, dest_opts=False):
    mac = bytes([0x52, 0x54, 0, 0, 0, 1])
    icmp = bytes([136, 0, 0, 0, 0x60, 0, 0, 0]) + target + bytes([2, 1]) + mac
    nxt, payload = 58, icmp
    if dest_opts:
        nxt, payload = 60, bytes([58, 0, 1, 4, 0, 0, 0, 0]) + icmp
    src = bytes([0xFD] + [0] * 14 + [1])
    ip6 = struct.pack("!IHBB", 0x60000000, len(payload), nxt, 255) + src + bytes([0xFF, 2] + [0] * 13 + [1])
    return bytes([0x33, 0x33, 0, 0, 0, 1]) + mac + b"\x86\xdd" + ip6 + payload


write("port_security", "udp-own", b"\0" + udp_frame()[:6] + bytes([0x52, 0x54, 0, 0, 0, 1]) + udp_frame()[12:])
write("port_security", "arp-own", b"\0" + arp_reply([10, 0, 0, 1]))
write("port_security", "arp-spoof", b"\0" + arp_reply([10, 0, 0, 2]))
write("port_security", "na-own", b"\0" + neighbour_advert(bytes([0xFD] + [0] * 14 + [1])))
write("port_security", "na-spoof-behind-options", b"\0" + neighbour_advert(bytes([0xFD, 1] + [0] * 13 + [1]), True))
write("port_security", "udp-own-csum", b"\1" + struct.pack("<HH", 34, 6) + udp_frame()[:6] + bytes([0x52, 0x54, 0, 0, 0, 1]) + udp_frame()[12:])


# --- conntrack: records of (flags, length, frame start); flags bit 0 commit, bits 1-2 zone,
# bit 3 advance the clock 40 s --
def tcp_seg(from_a, seq, ack, flags, payload=b"", opts=b""):
    src, dst = (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) if from_a else (bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]))
    sp, dp = (40000, 22) if from_a else (22, 40000)
    off = (20 + len(opts)) // 4
    tcp = struct.pack("!HHIIBBHHH", sp, dp, seq, ack, off << 4, flags, 64240, 0, 0) + opts + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, src, dst)
    return bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]) + b"\x08\x00" + ip + tcp


def record(flags, frame):
    frame = frame[:255]
    return bytes([flags, len(frame)]) + frame


wscale = bytes([1, 3, 3, 7])
write("conntrack", "tcp-handshake-data-fin",
      record(1, tcp_seg(True, 1000, 0, 0x02, opts=wscale))
      + record(0, tcp_seg(False, 5000, 1001, 0x12, opts=wscale))
      + record(0, tcp_seg(True, 1001, 5001, 0x10))
      + record(0, tcp_seg(True, 1001, 5001, 0x18, b"data" * 10))
      + record(0, tcp_seg(False, 5001, 1041, 0x11))
      + record(0, tcp_seg(True, 1041, 5002, 0x11))
      + record(0, tcp_seg(False, 5002, 1042, 0x10))
      + record(9, tcp_seg(True, 9000, 0, 0x02)))
write("conntrack", "tcp-rst-and-out-of-window",
      record(1, tcp_seg(True, 1000, 0, 0x02))
      + record(0, tcp_seg(False, 5000, 1001, 0x12))
      + record(0, tcp_seg(True, 1001 + 10 ** 8, 5001, 0x18, b"x" * 100))
      + record(0, tcp_seg(False, 5001, 0, 0x04)))
udp = udp_frame()
icmp_err = bytes([0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2]) + b"\x08\x00" + struct.pack(
    "!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 28, 1, 0, 64, 1, 0, bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])) \
    + bytes([3, 3, 0, 0, 0, 0, 0, 0]) + udp[14:14 + 28]
write("conntrack", "udp-and-related-error", record(3, udp) + record(2, icmp_err) + record(8, udp))
write("conntrack", "many-commits-over-the-limit",
      b"".join(record(1 | (z << 1), tcp_seg(True, 1000 + i, 0, 0x02)[:34] + struct.pack("!H", 1000 + i) + tcp_seg(True, 1000 + i, 0, 0x02)[36:])
               for i in range(12) for z in (0, 1)))
for i, line in enumerate([
    "table=72,priority=90,ct_state=+new-est+trk,ip,actions=ct(commit,zone=NXM_NX_REG6[0..15],exec(set_field:0x1->ct_mark,set_field:0x10/0xff->ct_label)),resubmit(,80)",
    "table=0,priority=100,in_port=1,ip,actions=load:0x1->NXM_NX_REG5[],move:NXM_OF_IN_PORT[]->NXM_NX_REG6[0..15],resubmit(,71)",
    "icmp6,ipv6_src=fd00::1/64,icmpv6_type=135,nd_target=fd00::2,nd_sll=52:54:00:00:00:01,actions=NORMAL",
    "ct_state=0x21/0x21,ct_zone=5,ct_mark=0x1/0x1,ct_label=0x1/0x1,ip,ct_nw_src=10.0.0.1,actions=ct_clear,resubmit(,1)",
]):
    write("parse_flow", "ct-regs-ipv6-%d" % i, bytes([0]) + line.encode())

write("parse_flow", "group-select", bytes([3]) + b"group_id=2,type=select,bucket=weight:10,actions=output:1,bucket=weight:20,mod_vlan_vid:5,output:2")
write("parse_flow", "group-ff", bytes([3]) + b"group_id=5,type=fast_failover,bucket=watch_port:1,output:1,bucket=watch_port:vm2,actions=output:2")
write("parse_flow", "meter-pktps", bytes([4]) + b"meter=3,pktps,burst,stats,bands=type=drop,rate=500,burst_size=50")
write("parse_flow", "learn", bytes([0]) + b"table=2 actions=learn(table=10,hard_timeout=300,NXM_OF_VLAN_TCI[0..11],NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],load:NXM_OF_IN_PORT[]->NXM_NX_REG0[0..15],output:NXM_OF_IN_PORT[]),resubmit(,3)")
