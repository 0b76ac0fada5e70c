//! The uniform block every kernel reads: [`Params`] here, and its WGSL twin in `params.wgsl`
//! beside this file, which the catalogue puts before every kernel's source at compile time. A
//! test below holds the two to one layout, field by field, so neither can change alone.

/// The WGSL header: `struct Params` and the global `p` that binds it.
pub const WGSL: &str = include_str!("params.wgsl");

/// Where the header binds `p` in group 0; plans bind the block there.
pub const BINDING: u32 = 0;

/// The uniform block every kernel reads (the WGSL `Params` in `params.wgsl`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Params {
    /// Elements, or the row length.
    pub n: u32,
    /// Rows: of `a` and the output for `matmul`, of the input matrix for the row kernels and
    /// `cosine_topk`.
    pub m: u32,
    /// Inner dimension, or k.
    pub k: u32,
    /// Workgroups along x, so a kernel can flatten a 2-D grid.
    pub groups_x: u32,
    /// First float parameter.
    pub f0: f32,
    /// Second float parameter.
    pub f1: f32,
    /// Unused: pads the block to 32 bytes and leaves room for an integer parameter without a
    /// layout change.
    pub u0: u32,
    /// Unused, like `u0`.
    pub u1: u32,
}

impl Params {
    /// The 32 bytes the shader sees.
    pub fn to_bytes(self) -> Vec<u8> {
        [self.n, self.m, self.k, self.groups_x, self.f0.to_bits(), self.f1.to_bits(), self.u0, self.u1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use naga::{AddressSpace, ResourceBinding, ScalarKind, TypeInner};

    /// One field of the twin, with the WGSL scalar it must be.
    enum Word {
        U32(u32),
        F32(f32),
    }

    fn header() -> naga::Module {
        let module = naga::front::wgsl::parse_str(WGSL).unwrap_or_else(|e| panic!("{}", e.emit_to_string(WGSL)));
        let flags = naga::valid::ValidationFlags::all();
        naga::valid::Validator::new(flags, naga::valid::Capabilities::empty())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string(WGSL)));
        module
    }

    #[test]
    fn the_wgsl_params_and_its_rust_twin_have_one_layout() {
        let module = header();
        let (handle, ty) =
            module.types.iter().find(|(_, t)| t.name.as_deref() == Some("Params")).expect("struct Params");
        let TypeInner::Struct { members, span } = &ty.inner else { panic!("Params is not a struct") };
        // Every field a different value, destructured so that a field added to the twin does not
        // compile here until it is listed.
        let twin = Params { n: 1, m: 2, k: 3, groups_x: 4, f0: 5.5, f1: -6.5, u0: 7, u1: 8 };
        let Params { n, m, k, groups_x, f0, f1, u0, u1 } = twin;
        let fields = [
            ("n", Word::U32(n)),
            ("m", Word::U32(m)),
            ("k", Word::U32(k)),
            ("groups_x", Word::U32(groups_x)),
            ("f0", Word::F32(f0)),
            ("f1", Word::F32(f1)),
            ("u0", Word::U32(u0)),
            ("u1", Word::U32(u1)),
        ];
        let wgsl_names: Vec<&str> = members.iter().map(|m| m.name.as_deref().unwrap_or("?")).collect();
        let rust_names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
        assert_eq!(wgsl_names, rust_names, "field names and order");

        let bytes = twin.to_bytes();
        assert_eq!(*span as usize, bytes.len(), "the WGSL struct's size against the bytes the host writes");
        assert_eq!(bytes.len(), size_of::<Params>());
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).expect("layout");
        let alignment = naga::proc::Alignment::new(u32::try_from(align_of::<Params>()).expect("a small alignment"));
        assert_eq!(Some(layouter[handle].alignment), alignment, "alignment");
        for (member, (name, word)) in members.iter().zip(&fields) {
            let TypeInner::Scalar(scalar) = module.types[member.ty].inner else { panic!("{name} is not a scalar") };
            let at = member.offset as usize;
            assert!(layouter[member.ty].alignment.is_aligned(member.offset), "{name} at {at}");
            let seen = &bytes[at..at + usize::from(scalar.width)];
            let (kind, wrote) = match word {
                Word::U32(v) => (ScalarKind::Uint, v.to_le_bytes()),
                Word::F32(v) => (ScalarKind::Float, v.to_le_bytes()),
            };
            assert_eq!((scalar.kind, scalar.width), (kind, 4), "{name}'s type");
            assert_eq!(seen, wrote, "{name} is not where the shader reads it (offset {at})");
        }
    }

    #[test]
    fn the_header_binds_p_where_plans_put_the_block() {
        let module = header();
        let mut globals = module.global_variables.iter();
        let (_, p) = globals.next().expect("a global");
        assert!(globals.next().is_none(), "the header declares only p");
        assert_eq!(p.name.as_deref(), Some("p"));
        assert_eq!(p.space, AddressSpace::Uniform);
        assert_eq!(p.binding, Some(ResourceBinding { group: 0, binding: BINDING }));
        assert_eq!(module.types[p.ty].name.as_deref(), Some("Params"));
    }
}
