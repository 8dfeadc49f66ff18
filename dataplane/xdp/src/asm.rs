//! A small eBPF assembler: just the instructions the XDP programs need, with labels so
//! jumps are written by name and resolved once at the end.
//!
//! Packet bytes are loaded in the host's byte order (eBPF is host-endian), so constants
//! compared against packet fields are written with [`ne16`] / [`ne32`] from their
//! network-order bytes; comparisons of 32-bit fields use the JMP32 class so the
//! immediate is not sign-extended.

/// A register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(u8);

/// Return value / helper result.
pub const R0: Reg = Reg(0);
/// First argument; the context on entry.
pub const R1: Reg = Reg(1);
/// Second argument.
pub const R2: Reg = Reg(2);
/// Third argument.
pub const R3: Reg = Reg(3);
/// Scratch.
pub const R4: Reg = Reg(4);
/// Scratch.
pub const R5: Reg = Reg(5);

/// Load/store width.
#[derive(Debug, Clone, Copy)]
pub enum Size {
    /// 8 bits.
    B,
    /// 16 bits.
    H,
    /// 32 bits.
    W,
}

/// Conditional jump operators.
#[derive(Debug, Clone, Copy)]
pub enum Cond {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// unsigned `>`
    Gt,
    /// unsigned `<`
    Lt,
    /// `& != 0`
    Set,
}

const CLS_LDX: u8 = 0x01;
const CLS_ALU: u8 = 0x04;
const CLS_JMP: u8 = 0x05;
const CLS_JMP32: u8 = 0x06;
const CLS_ALU64: u8 = 0x07;
const MODE_MEM: u8 = 0x60;
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;
const OP_ADD: u8 = 0x00;
const OP_AND: u8 = 0x50;
const OP_LSH: u8 = 0x60;
const OP_MOV: u8 = 0xb0;
const OP_CALL: u8 = 0x80;
const OP_EXIT: u8 = 0x90;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;

/// A label: a position in the program, bound once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

#[derive(Debug, Clone, Copy)]
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn encode(self) -> u64 {
        // struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm } in host order.
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.src << 4) | (self.dst & 0x0f);
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        u64::from_ne_bytes(b)
    }
}

/// A program being assembled.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

/// Network-order bytes of a 16-bit field as a host-endian load sees them.
#[must_use]
pub fn ne16(v: u16) -> i32 {
    i32::from(u16::from_ne_bytes(v.to_be_bytes()))
}

/// Network-order bytes of a 32-bit field as a host-endian load sees them (as the
/// immediate of a 32-bit operation).
#[must_use]
pub fn ne32(v: u32) -> i32 {
    i32::from_ne_bytes(v.to_be_bytes())
}

impl Asm {
    /// An empty program.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> &mut Self {
        self.insns.push(Insn { code, dst: dst.0, src: src.0, off, imm });
        self
    }

    /// A new, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Bind `l` to the next instruction.
    ///
    /// # Panics
    /// If `l` is already bound.
    pub fn bind(&mut self, l: Label) -> &mut Self {
        assert!(self.labels[l.0].is_none(), "label bound twice");
        self.labels[l.0] = Some(self.insns.len());
        self
    }

    /// `dst = *(size *)(src + off)`
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        let sz = match size {
            Size::B => 0x10,
            Size::H => 0x08,
            Size::W => 0x00,
        };
        self.push(CLS_LDX | MODE_MEM | sz, dst, src, off, 0)
    }

    /// `dst = imm` (64-bit).
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(CLS_ALU64 | OP_MOV | SRC_K, dst, R0, 0, imm)
    }

    /// `dst = src` (64-bit).
    pub fn mov(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(CLS_ALU64 | OP_MOV | SRC_X, dst, src, 0, 0)
    }

    /// `dst += imm` (64-bit).
    pub fn add_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(CLS_ALU64 | OP_ADD | SRC_K, dst, R0, 0, imm)
    }

    /// `dst += src` (64-bit).
    pub fn add(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(CLS_ALU64 | OP_ADD | SRC_X, dst, src, 0, 0)
    }

    /// `dst &= imm` (64-bit).
    pub fn and_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(CLS_ALU64 | OP_AND | SRC_K, dst, R0, 0, imm)
    }

    /// `dst = (u32)dst & (u32)imm` (32-bit; the upper half is zeroed).
    pub fn and32_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(CLS_ALU | OP_AND | SRC_K, dst, R0, 0, imm)
    }

    /// `dst <<= imm` (64-bit).
    pub fn lsh_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(CLS_ALU64 | OP_LSH | SRC_K, dst, R0, 0, imm)
    }

    /// `if (dst cond imm) goto target`, comparing 64 bits.
    pub fn jmp_imm(&mut self, cond: Cond, dst: Reg, imm: i32, target: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), target));
        self.push(CLS_JMP | cond_op(cond) | SRC_K, dst, R0, 0, imm)
    }

    /// `if ((u32)dst cond (u32)imm) goto target`, comparing the low 32 bits.
    pub fn jmp32_imm(&mut self, cond: Cond, dst: Reg, imm: i32, target: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), target));
        self.push(CLS_JMP32 | cond_op(cond) | SRC_K, dst, R0, 0, imm)
    }

    /// `if (dst cond src) goto target`, comparing 64 bits (used for packet bounds).
    pub fn jmp_reg(&mut self, cond: Cond, dst: Reg, src: Reg, target: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), target));
        self.push(CLS_JMP | cond_op(cond) | SRC_X, dst, src, 0, 0)
    }

    /// `dst = map` (the two-slot `ld_imm64` with `BPF_PSEUDO_MAP_FD`).
    pub fn load_map_fd(&mut self, dst: Reg, fd: i32) -> &mut Self {
        self.push(LD_IMM64, dst, Reg(PSEUDO_MAP_FD), 0, fd);
        self.push(0, R0, R0, 0, 0)
    }

    /// Call helper number `helper`.
    pub fn call(&mut self, helper: i32) -> &mut Self {
        self.push(CLS_JMP | OP_CALL, R0, R0, 0, helper)
    }

    /// `return r0`.
    pub fn exit(&mut self) -> &mut Self {
        self.push(CLS_JMP | OP_EXIT, R0, R0, 0, 0)
    }

    /// Resolve jumps and encode.
    ///
    /// # Panics
    /// If a jump targets an unbound label or lies more than 32767 instructions away
    /// (programming errors in the program generators, caught by their tests).
    #[must_use]
    pub fn finish(mut self) -> Vec<u64> {
        for &(at, l) in &self.fixups {
            let target = self.labels[l.0].expect("jump to an unbound label");
            let rel = i64::try_from(target).expect("small") - i64::try_from(at).expect("small") - 1;
            self.insns[at].off = i16::try_from(rel).expect("jump within range");
        }
        self.insns.into_iter().map(Insn::encode).collect()
    }
}

fn cond_op(c: Cond) -> u8 {
    match c {
        Cond::Eq => 0x10,
        Cond::Gt => 0x20,
        Cond::Set => 0x40,
        Cond::Ne => 0x50,
        Cond::Lt => 0xa0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_instructions() {
        let mut a = Asm::new();
        let end = a.label();
        a.mov_imm(R0, 2).jmp_imm(Cond::Eq, R1, 0, end).load(Size::W, R2, R1, 4).bind(end).exit();
        let insns = a.finish();
        // r0 = 2: b7 00 0000 02000000
        assert_eq!(insns[0].to_ne_bytes(), [0xb7, 0x00, 0, 0, 2, 0, 0, 0]);
        // if r1 == 0 goto +1: 15 01 0100 00000000
        assert_eq!(insns[1].to_ne_bytes(), [0x15, 0x01, 1, 0, 0, 0, 0, 0]);
        // r2 = *(u32 *)(r1 + 4): 61 12 0400 00000000
        assert_eq!(insns[2].to_ne_bytes(), [0x61, 0x12, 4, 0, 0, 0, 0, 0]);
        assert_eq!(insns[3].to_ne_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn network_order_constants() {
        let frame = [0x08u8, 0x00, 192, 168, 50, 200];
        assert_eq!(i32::from(u16::from_ne_bytes([frame[0], frame[1]])), ne16(0x0800));
        let ip = u32::from_ne_bytes([frame[2], frame[3], frame[4], frame[5]]);
        assert_eq!(ip.cast_signed(), ne32(u32::from_be_bytes([192, 168, 50, 200])));
    }
}
