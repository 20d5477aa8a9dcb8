//! A reader of the kernel's BTF, just enough to find struct field offsets.
//!
//! Rust eBPF has no CO-RE, so the offsets the programs need are resolved here, on the host that
//! runs them, from `/sys/kernel/btf/vmlinux`. Fields inside anonymous structs and unions (the
//! kernel uses many, e.g. in `struct sock_common`) are found by descending into them.

use std::path::Path;

/// Where the running kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("BTF data is malformed: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("struct `{strukt}` has no field `{field}` in this kernel's BTF")]
    NoField { strukt: String, field: String },
    #[error("field `{strukt}.{field}` is a bitfield; it cannot be read by byte offset")]
    Bitfield { strukt: String, field: String },
    #[error("field `{strukt}.{field}` is {actual} bytes here, sockspan expects {expected}")]
    Size {
        strukt: String,
        field: String,
        expected: u32,
        actual: u32,
    },
}

/// BTF kinds (`BTF_KIND_*` in `include/uapi/linux/btf.h`).
mod kind {
    pub const INT: u8 = 1;
    pub const PTR: u8 = 2;
    pub const ARRAY: u8 = 3;
    pub const STRUCT: u8 = 4;
    pub const UNION: u8 = 5;
    pub const ENUM: u8 = 6;
    pub const FWD: u8 = 7;
    pub const TYPEDEF: u8 = 8;
    pub const VOLATILE: u8 = 9;
    pub const CONST: u8 = 10;
    pub const RESTRICT: u8 = 11;
    pub const FUNC: u8 = 12;
    pub const FUNC_PROTO: u8 = 13;
    pub const VAR: u8 = 14;
    pub const DATASEC: u8 = 15;
    pub const FLOAT: u8 = 16;
    pub const DECL_TAG: u8 = 17;
    pub const TYPE_TAG: u8 = 18;
    pub const ENUM64: u8 = 19;
}

#[derive(Debug, Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset from the start of the enclosing type, in bits.
    bit_offset: u32,
    /// Non-zero for a bitfield.
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name_off: u32,
    kind: u8,
    /// Size in bytes for INT/STRUCT/UNION/ENUM, the referenced type id for modifiers and PTR.
    size_or_ref: u32,
    /// Element type and count for ARRAY.
    array: Option<(u32, u32)>,
    members: Vec<Member>,
}

/// Deepest nesting of arrays or anonymous members followed; the kernel's are a few levels.
const MAX_NESTING: u32 = 32;

/// Parsed type and string sections of a BTF blob.
#[derive(Debug)]
pub struct Btf {
    /// Index 0 is the implicit `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses a little-endian BTF blob (the only byte order of the hosts sockspan targets).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data
            .get(0..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or(BtfError::Malformed("truncated header"))?;
        if magic != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (big-endian or not BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let types = parse_types(types_data)?;
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn get(&self, id: u32) -> Result<&Type, BtfError> {
        self.types
            .get(id as usize)
            .ok_or(BtfError::Malformed("type id out of range"))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..32 {
            let ty = self.get(id)?;
            match ty.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = ty.size_or_ref;
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::Malformed("typedef chain too long"))
    }

    /// Size in bytes of a type.
    fn size_of(&self, id: u32) -> Result<u32, BtfError> {
        self.size_at_depth(id, 0)
    }

    /// `size_of`, refusing arrays nested deeper than any kernel declares (a malformed blob can
    /// make an array its own element).
    fn size_at_depth(&self, id: u32, depth: u32) -> Result<u32, BtfError> {
        if depth > MAX_NESTING {
            return Err(BtfError::Malformed(
                "arrays nested too deep (a type cycle?)",
            ));
        }
        let id = self.resolve(id)?;
        let ty = self.get(id)?;
        Ok(match ty.kind {
            kind::PTR => 8,
            kind::ARRAY => {
                let (elem, n) = ty.array.ok_or(BtfError::Malformed("array without info"))?;
                self.size_at_depth(elem, depth + 1)?.saturating_mul(n)
            }
            _ => ty.size_or_ref,
        })
    }

    /// The id of the struct named `name` (a definition, not a forward declaration).
    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|t| {
                t.kind == kind::STRUCT
                    && !t.members.is_empty()
                    && self.name(t.name_off) == name.as_bytes()
            })
            .map(|i| i as u32)
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))
    }

    /// The type id of the kernel function `name` (a `BTF_KIND_FUNC`), for attach-by-BTF probes.
    #[must_use]
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == kind::FUNC && self.name(t.name_off) == name.as_bytes())
            .map(|i| i as u32)
    }

    /// Whether the kernel declares the raw tracepoint `name` for BTF attachment (its
    /// `btf_trace_<name>` typedef), as the `sys_enter`/`sys_exit` programs need.
    #[must_use]
    pub fn has_raw_tracepoint(&self, name: &str) -> bool {
        let typedef = format!("btf_trace_{name}");
        self.types
            .iter()
            .any(|t| t.kind == kind::TYPEDEF && self.name(t.name_off) == typedef.as_bytes())
    }

    /// Finds `field` in the struct/union `id`, looking into anonymous members; returns the bit
    /// offset from the start of `id` and the member.
    fn find_member(&self, id: u32, field: &str) -> Result<Option<(u32, Member)>, BtfError> {
        self.find_member_at_depth(id, field, 0)
    }

    /// `find_member`, refusing anonymous members nested deeper than any kernel declares (a
    /// malformed blob can make a struct its own anonymous member).
    fn find_member_at_depth(
        &self,
        id: u32,
        field: &str,
        depth: u32,
    ) -> Result<Option<(u32, Member)>, BtfError> {
        if depth > MAX_NESTING {
            return Err(BtfError::Malformed(
                "anonymous members nested too deep (a type cycle?)",
            ));
        }
        let ty = self.get(self.resolve(id)?)?;
        for m in &ty.members {
            let name = self.name(m.name_off);
            if name == field.as_bytes() {
                return Ok(Some((m.bit_offset, *m)));
            }
            if name.is_empty() {
                let inner = self.get(self.resolve(m.type_id)?)?;
                if matches!(inner.kind, kind::STRUCT | kind::UNION)
                    && let Some((off, found)) =
                        self.find_member_at_depth(m.type_id, field, depth + 1)?
                {
                    let total = m
                        .bit_offset
                        .checked_add(off)
                        .ok_or(BtfError::Malformed("member offset overflows"))?;
                    return Ok(Some((total, found)));
                }
            }
        }
        Ok(None)
    }

    /// Byte offset of `path` (fields separated by dots, e.g. `__sk_common.skc_family`) inside
    /// struct `strukt`, checking that the last field is `expected_size` bytes.
    pub fn field_offset(
        &self,
        strukt: &str,
        path: &str,
        expected_size: u32,
    ) -> Result<u32, BtfError> {
        let mut id = self.struct_id(strukt)?;
        let mut bits = 0u32;
        let mut last = None;
        for field in path.split('.') {
            let (off, member) = self
                .find_member(id, field)?
                .ok_or_else(|| BtfError::NoField {
                    strukt: strukt.to_string(),
                    field: path.to_string(),
                })?;
            if member.bitfield_size != 0 || off % 8 != 0 {
                return Err(BtfError::Bitfield {
                    strukt: strukt.to_string(),
                    field: path.to_string(),
                });
            }
            bits = bits
                .checked_add(off)
                .ok_or(BtfError::Malformed("member offset overflows"))?;
            id = member.type_id;
            last = Some(member);
        }
        let member = last.ok_or(BtfError::Malformed("empty field path"))?;
        let actual = self.size_of(member.type_id)?;
        if actual != expected_size {
            return Err(BtfError::Size {
                strukt: strukt.to_string(),
                field: path.to_string(),
                expected: expected_size,
                actual,
            });
        }
        Ok(bits / 8)
    }
}

/// Reads the type section: a sequence of `struct btf_type` each followed by kind-specific data.
fn parse_types(data: &[u8]) -> Result<Vec<Type>, BtfError> {
    let mut types = vec![Type {
        name_off: 0,
        kind: 0,
        size_or_ref: 0,
        array: None,
        members: Vec::new(),
    }];
    let mut at = 0;
    while at < data.len() {
        let name_off = u32_at(data, at)?;
        let info = u32_at(data, at + 4)?;
        let size_or_ref = u32_at(data, at + 8)?;
        at += 12;
        let vlen = (info & 0xffff) as usize;
        let kind = ((info >> 24) & 0x1f) as u8;
        let kind_flag = info >> 31 == 1;
        let mut ty = Type {
            name_off,
            kind,
            size_or_ref,
            array: None,
            members: Vec::new(),
        };
        match kind {
            kind::INT | kind::VAR | kind::DECL_TAG => at += 4,
            kind::PTR
            | kind::FWD
            | kind::TYPEDEF
            | kind::VOLATILE
            | kind::CONST
            | kind::RESTRICT
            | kind::FUNC
            | kind::FLOAT
            | kind::TYPE_TAG => {}
            kind::ARRAY => {
                ty.array = Some((u32_at(data, at)?, u32_at(data, at + 8)?));
                at += 12;
            }
            kind::STRUCT | kind::UNION => {
                ty.members.reserve(vlen);
                for _ in 0..vlen {
                    let offset = u32_at(data, at + 8)?;
                    let (bit_offset, bitfield_size) = if kind_flag {
                        (offset & 0x00ff_ffff, offset >> 24)
                    } else {
                        (offset, 0)
                    };
                    ty.members.push(Member {
                        name_off: u32_at(data, at)?,
                        type_id: u32_at(data, at + 4)?,
                        bit_offset,
                        bitfield_size,
                    });
                    at += 12;
                }
            }
            kind::ENUM | kind::FUNC_PROTO => at += 8 * vlen,
            kind::DATASEC | kind::ENUM64 => at += 12 * vlen,
            _ => return Err(BtfError::Malformed("unknown BTF kind")),
        }
        types.push(ty);
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct outer { int a; union { short b; long c; }; char d[3]; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0c\0d\0int\0short\0long\0char\0".to_vec();
        let s = |name: &str| {
            let pos = strings
                .windows(name.len() + 2)
                .position(|w| {
                    w[0] == 0 && &w[1..=name.len()] == name.as_bytes() && w[name.len() + 1] == 0
                })
                .expect("name in table");
            (pos + 1) as u32
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes)
        push(&[s("int"), u32::from(kind::INT) << 24, 4, 32]);
        // 2: short
        push(&[s("short"), u32::from(kind::INT) << 24, 2, 16]);
        // 3: long
        push(&[s("long"), u32::from(kind::INT) << 24, 8, 64]);
        // 4: char
        push(&[s("char"), u32::from(kind::INT) << 24, 1, 8]);
        // 5: anonymous union { short b; long c; }
        push(&[0, (u32::from(kind::UNION) << 24) | 2, 8]);
        push(&[s("b"), 2, 0]);
        push(&[s("c"), 3, 0]);
        // 6: char[3]
        push(&[0, u32::from(kind::ARRAY) << 24, 0, 4, 1, 3]);
        // 7: struct outer
        push(&[s("outer"), (u32::from(kind::STRUCT) << 24) | 3, 24]);
        push(&[s("a"), 1, 0]);
        push(&[0, 5, 64]);
        push(&[s("d"), 6, 128]);
        let mut blob = Vec::new();
        for w in [
            u32::from(BTF_MAGIC) | (1 << 16),
            24,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(&t);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn finds_fields_inside_anonymous_unions() {
        let btf = Btf::parse(&sample()).expect("parse");
        assert_eq!(btf.field_offset("outer", "a", 4).expect("a"), 0);
        assert_eq!(btf.field_offset("outer", "b", 2).expect("b"), 8);
        assert_eq!(btf.field_offset("outer", "c", 8).expect("c"), 8);
        assert_eq!(btf.field_offset("outer", "d", 3).expect("d"), 16);
    }

    #[test]
    fn names_what_is_missing_or_mismatched() {
        let btf = Btf::parse(&sample()).expect("parse");
        let err = btf
            .field_offset("outer", "zz", 4)
            .expect_err("missing field");
        assert!(err.to_string().contains("no field `zz`"), "{err}");
        let err = btf
            .field_offset("nope", "a", 4)
            .expect_err("missing struct");
        assert!(err.to_string().contains("no struct `nope`"), "{err}");
        let err = btf.field_offset("outer", "a", 8).expect_err("size");
        assert!(err.to_string().contains("4 bytes here"), "{err}");
    }

    /// Found by the `btf` fuzz target: a struct whose anonymous member is the struct itself
    /// recursed until the stack overflowed.
    #[test]
    fn type_cycles_are_malformed_not_a_stack_overflow() {
        let mut blob = sample();
        // Point the anonymous member of `outer` (type 7, member 2 → type 5) at `outer` itself.
        // Types start at 24; `outer` is the 7th type, after 4 ints (16 bytes each), the union
        // (12 + 2×12) and the array (24): its second member's type id is 16 + 12 + 12 + 4 bytes in.
        let outer = 24 + 4 * 16 + 36 + 24;
        let member_type = outer + 12 + 12 + 4;
        blob[member_type..member_type + 4].copy_from_slice(&7u32.to_le_bytes());
        let btf = Btf::parse(&blob).expect("parse");
        let err = btf.field_offset("outer", "zz", 4).expect_err("cycle");
        assert!(err.to_string().contains("cycle"), "{err}");
        // And an array that is its own element.
        let mut blob = sample();
        let array = 24 + 4 * 16 + 36;
        blob[array + 12..array + 16].copy_from_slice(&6u32.to_le_bytes());
        let btf = Btf::parse(&blob).expect("parse");
        assert!(btf.field_offset("outer", "d", 3).is_err());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0]).is_err());
        let mut blob = sample();
        blob.truncate(40);
        assert!(Btf::parse(&blob).is_err());
    }
}
