//! The manifest: a description of every structure, constant and ioctl number this crate declares,
//! produced by the declaration macros themselves (so it cannot drift from the declarations).
//!
//! The differential tests walk the manifest: `tests/abi_vs_linux.rs` turns it into a C program
//! compiled against `<linux/kvm.h>`, and the unit tests compare it with the `kvm-bindings` crate.

/// Where the C compiler can find the type a Rust declaration mirrors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CType {
    /// `struct <name>` in the Linux headers.
    Struct(&'static str),
    /// An anonymous struct or union that Linux reaches as member `path` of `struct <parent>`
    /// (`path` may contain `.` and `[0]`); C names it `__typeof__(((struct parent *)0)->path)`.
    Member {
        /// The named Linux struct that contains it.
        parent: &'static str,
        /// The member designator leading to it.
        path: &'static str,
    },
    /// An anonymous union with no member name in Linux (C11 anonymous member) inside
    /// `struct <parent>`: it starts where its first member `anchor` starts, and its members'
    /// designators are relative to the parent.
    Unnamed {
        /// The named Linux struct that contains it.
        parent: &'static str,
        /// The member of the union whose offset is the union's offset.
        anchor: &'static str,
    },
}

/// One member as Linux names it: C designator relative to the type, byte offset, byte size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLayout {
    /// C member designator relative to the type (`port`, `io.port`, `regs[3]`...).
    pub path: &'static str,
    /// Byte offset from the start of the type.
    pub offset: usize,
    /// Byte size of the member.
    pub size: usize,
}

/// Size, alignment and members of one declared structure or union.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StructLayout {
    /// The Rust type name (the Linux name for named Linux structs).
    pub name: &'static str,
    /// The C type it mirrors.
    pub c: CType,
    /// `sizeof`.
    pub size: usize,
    /// `_Alignof`.
    pub align: usize,
    /// Every member with its Linux designator.
    pub fields: &'static [FieldLayout],
}

/// One `#define` (or enumerator) value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConstInfo {
    /// The Linux name.
    pub name: &'static str,
    /// The value, converted to `u64` (two's complement for negative C values).
    pub value: u64,
}

/// Which descriptors accept an ioctl (a bit set of `FD_*`).
pub type FdKinds = u8;
/// `/dev/kvm`.
pub const FD_SYSTEM: FdKinds = 1;
/// A VM descriptor (from `KVM_CREATE_VM`).
pub const FD_VM: FdKinds = 2;
/// A vCPU descriptor (from `KVM_CREATE_VCPU`).
pub const FD_VCPU: FdKinds = 4;
/// A device descriptor (from `KVM_CREATE_DEVICE`).
pub const FD_DEVICE: FdKinds = 8;

/// One ioctl command number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoctlInfo {
    /// The Linux name.
    pub name: &'static str,
    /// The 32-bit command word.
    pub value: u32,
    /// Descriptor kinds that accept it.
    pub fds: FdKinds,
}

/// Implemented by every declared structure: its manifest entry.
pub trait Abi {
    /// Layout facts, each asserted at compile time against the Rust type.
    const LAYOUT: StructLayout;
}

/// Reinterprets the storage of a byte-backed union as one of its members.
///
/// Size and alignment are checked at compile time (monomorphization), so this cannot fail.
#[inline(always)]
pub(crate) fn view<S, T>(storage: &S) -> &T
where
    S: zerocopy::FromBytes + zerocopy::IntoBytes + zerocopy::Immutable,
    T: zerocopy::FromBytes + zerocopy::Immutable,
{
    const {
        assert!(core::mem::size_of::<T>() <= core::mem::size_of::<S>());
        assert!(core::mem::align_of::<T>() <= core::mem::align_of::<S>());
    }
    // SAFETY: `T` fits in `S` and needs no stricter alignment than `S` (checked above at compile
    // time); `S: IntoBytes` means all its bytes are initialized and `T: FromBytes` accepts any
    // initialized bytes; neither type has interior mutability (`Immutable`); the returned
    // reference borrows `storage` so it cannot outlive it.
    unsafe { &*(storage as *const S).cast::<T>() }
}

/// Mutable form of [`view`].
#[inline(always)]
pub(crate) fn view_mut<S, T>(storage: &mut S) -> &mut T
where
    S: zerocopy::FromBytes + zerocopy::IntoBytes,
    T: zerocopy::FromBytes + zerocopy::IntoBytes,
{
    const {
        assert!(core::mem::size_of::<T>() <= core::mem::size_of::<S>());
        assert!(core::mem::align_of::<T>() <= core::mem::align_of::<S>());
    }
    // SAFETY: as in `view`; in addition `T: IntoBytes` (no padding) means whatever is written
    // through the reference leaves every byte of `S` initialized, and `S: FromBytes` accepts
    // any resulting bytes. The exclusive borrow of `storage` prevents aliasing.
    unsafe { &mut *(storage as *mut S).cast::<T>() }
}

/// Concatenates manifest slices at compile time (`N` must be the total length).
///
/// Only evaluated in constant context: an out-of-range index is a compile error, not a panic.
#[allow(clippy::indexing_slicing)]
pub(crate) const fn concat<T: Copy, const N: usize>(parts: &[&[T]], fill: T) -> [T; N] {
    let mut out = [fill; N];
    let mut n = 0;
    let mut p = 0;
    while p < parts.len() {
        let part = parts[p];
        let mut i = 0;
        while i < part.len() {
            out[n] = part[i];
            n += 1;
            i += 1;
        }
        p += 1;
    }
    assert!(n == N, "manifest concat: wrong total length");
    out
}

/// Total length of manifest slices (for [`concat`]); only evaluated in constant context.
#[allow(clippy::indexing_slicing)]
pub(crate) const fn total_len<T>(parts: &[&[T]]) -> usize {
    let mut n = 0;
    let mut p = 0;
    while p < parts.len() {
        n += parts[p].len();
        p += 1;
    }
    n
}

/// Picks the C designator of a field: the Rust name unless overridden.
macro_rules! c_path {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident, $c:literal) => {
        $c
    };
}
pub(crate) use c_path;

/// Builds the [`CType`] of a declaration: `linux` (a named Linux struct of the same name),
/// `member("parent", "path")` or `unnamed("parent", "anchor")`.
macro_rules! c_type {
    (linux, $name:ident) => {
        $crate::manifest::CType::Struct(stringify!($name))
    };
    (member, $name:ident, $parent:literal, $path:literal) => {
        $crate::manifest::CType::Member {
            parent: $parent,
            path: $path,
        }
    };
    (unnamed, $name:ident, $parent:literal, $anchor:literal) => {
        $crate::manifest::CType::Unnamed {
            parent: $parent,
            anchor: $anchor,
        }
    };
}
pub(crate) use c_type;

/// Test-only comparison with the `kvm-bindings` crate, implemented by every declared type.
#[cfg(test)]
pub(crate) trait KbCompare {
    /// Pushes (item, ours, theirs) for the size, alignment and plainly named fields of the
    /// `kvm_bindings` type of the same name (nothing for types Linux leaves anonymous).
    fn kb_compare(out: &mut std::vec::Vec<(std::string::String, u64, u64)>);
}

/// Emits the `KbCompare` impl: real comparisons for `linux` types, none for anonymous ones.
/// Fields declared with `as "..."` (Linux reaches their bytes some other way) are skipped.
#[cfg(test)]
macro_rules! kb_compare {
    (linux, $name:ident, $( $field:ident $(, $cpath:literal)? );*) => {
        impl $crate::manifest::KbCompare for $name {
            fn kb_compare(out: &mut std::vec::Vec<(std::string::String, u64, u64)>) {
                out.push((concat!("sizeof ", stringify!($name)).into(),
                    core::mem::size_of::<$name>() as u64,
                    core::mem::size_of::<kvm_bindings::$name>() as u64));
                out.push((concat!("alignof ", stringify!($name)).into(),
                    core::mem::align_of::<$name>() as u64,
                    core::mem::align_of::<kvm_bindings::$name>() as u64));
                $( $crate::manifest::kb_field!(out, $name, $field $(, $cpath)?); )*
            }
        }
    };
    ($kind:ident, $name:ident, $( $field:ident $(, $cpath:literal)? );*) => {
        impl $crate::manifest::KbCompare for $name {
            fn kb_compare(_out: &mut std::vec::Vec<(std::string::String, u64, u64)>) {}
        }
    };
}
#[cfg(test)]
pub(crate) use kb_compare;

/// One field offset comparison with `kvm_bindings` (skipped for fields with a C path override).
#[cfg(test)]
macro_rules! kb_field {
    ($out:ident, $name:ident, $field:ident) => {
        $out.push((
            concat!("offsetof ", stringify!($name), ".", stringify!($field)).into(),
            core::mem::offset_of!($name, $field) as u64,
            core::mem::offset_of!(kvm_bindings::$name, $field) as u64,
        ));
    };
    ($out:ident, $name:ident, $field:ident, $cpath:literal) => {};
}
#[cfg(test)]
pub(crate) use kb_field;

/// Declares a `#[repr(C)]` Linux structure: emits the struct with zerocopy derives, asserts its
/// size, alignment and every field offset at compile time, and implements [`Abi`].
///
/// Syntax: `pub struct NAME: KIND, size S, align A { pub field: T = OFFSET [as "c.path"], ... }`
/// where KIND is `linux`, `member("parent", "path")` or `unnamed("parent", "anchor")` (see
/// [`CType`]), optionally followed by `aliases { "c.path" = OFFSET, SIZE; ... }` for other names
/// Linux gives the same bytes (members of an anonymous union folded into one Rust field). A field
/// with `as ""` is implicit C padding made explicit (not checked against C).
macro_rules! abi_struct {
    (
        $(#[doc = $doc:literal])*
        pub struct $name:ident : $kind:ident $( ( $($carg:literal),* ) )?, size $size:literal, align $align:literal {
            $(
                $(#[doc = $fdoc:literal])*
                pub $field:ident : $fty:ty = $off:literal $(as $cpath:literal)?
            ),* $(,)?
        }
        $( aliases { $( $apath:literal = $aoff:literal, $asize:literal );* $(;)? } )?
    ) => {
        $(#[doc = $doc])*
        #[repr(C)]
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq,
            zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable, zerocopy::KnownLayout,
        )]
        pub struct $name {
            $(
                #[doc = concat!("Linux `", stringify!($name), ".", $crate::manifest::c_path!($field $(, $cpath)?), "` at byte ", stringify!($off), ".")]
                $(#[doc = ""] #[doc = $fdoc])*
                pub $field: $fty,
            )*
        }

        const _: () = {
            assert!(core::mem::size_of::<$name>() == $size);
            assert!(core::mem::align_of::<$name>() == $align);
            $( assert!(core::mem::offset_of!($name, $field) == $off); )*
            $($( assert!($aoff + $asize <= $size); )*)?
        };

        impl $crate::manifest::Abi for $name {
            const LAYOUT: $crate::manifest::StructLayout = $crate::manifest::StructLayout {
                name: stringify!($name),
                c: $crate::manifest::c_type!($kind, $name $($(, $carg)*)?),
                size: $size,
                align: $align,
                fields: &[
                    $( $crate::manifest::FieldLayout {
                        path: $crate::manifest::c_path!($field $(, $cpath)?),
                        offset: $off,
                        size: core::mem::size_of::<$fty>(),
                    }, )*
                    $($( $crate::manifest::FieldLayout { path: $apath, offset: $aoff, size: $asize }, )*)?
                ],
            };
        }

        #[cfg(test)]
        $crate::manifest::kb_compare!($kind, $name, $( $field $(, $cpath)? );*);
    };
}
pub(crate) use abi_struct;

/// Declares a Linux union as a byte-backed struct (zerocopy cannot derive `IntoBytes` for unions
/// whose members differ in size): `storage` fixes size and alignment, and each Linux member gets a
/// `name()`/`name_mut()` accessor pair returning a typed reference into the storage.
///
/// Syntax: `pub union NAME: KIND, storage [uN; K], size S, align A { member, member_mut: T; ... }`
macro_rules! abi_union {
    (
        $(#[doc = $doc:literal])*
        pub union $name:ident : $kind:ident $( ( $($carg:literal),* ) )?, storage $storage:ty, size $size:literal, align $align:literal {
            $(
                $(#[doc = $fdoc:literal])*
                $member:ident, $member_mut:ident : $mty:ty
            );* $(;)?
        }
    ) => {
        $(#[doc = $doc])*
        ///
        /// Linux declares this as a union; its members are read and written through the accessor
        /// methods named after them.
        #[repr(C)]
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq,
            zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable, zerocopy::KnownLayout,
        )]
        pub struct $name {
            /// The union's bytes.
            pub raw: $storage,
        }

        const _: () = {
            assert!(core::mem::size_of::<$name>() == $size);
            assert!(core::mem::align_of::<$name>() == $align);
            $(
                assert!(core::mem::size_of::<$mty>() <= $size);
                assert!(core::mem::align_of::<$mty>() <= $align);
            )*
        };

        impl $name {
            $(
                $(#[doc = $fdoc])*
                #[doc = concat!("Linux member `", stringify!($member), "`.")]
                #[inline]
                pub fn $member(&self) -> &$mty {
                    $crate::manifest::view(&self.raw)
                }
                #[doc = concat!("Linux member `", stringify!($member), "`, mutable.")]
                #[inline]
                pub fn $member_mut(&mut self) -> &mut $mty {
                    $crate::manifest::view_mut(&mut self.raw)
                }
            )*
        }

        impl $crate::manifest::Abi for $name {
            const LAYOUT: $crate::manifest::StructLayout = $crate::manifest::StructLayout {
                name: stringify!($name),
                c: $crate::manifest::c_type!($kind, $name $($(, $carg)*)?),
                size: $size,
                align: $align,
                fields: &[
                    $( $crate::manifest::FieldLayout {
                        path: stringify!($member),
                        offset: 0,
                        size: core::mem::size_of::<$mty>(),
                    }, )*
                ],
            };
        }

        #[cfg(test)]
        $crate::manifest::kb_compare!($kind, $name, );
    };
}
pub(crate) use abi_union;

/// Declares a group of constants: each becomes `pub const NAME: T = V;` documented with the
/// group's description, and the group's manifest slice `pub const $list: &[ConstInfo]`. In test
/// builds, module `$list` holds `kb()`, the comparison with `kvm_bindings` constants of the same
/// names (`None` where kvm-bindings has no such constant).
macro_rules! abi_consts {
    (
        $(#[doc = $ldoc:literal])*
        list $list:ident, $gdoc:literal;
        $( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $val:expr; )*
    ) => {
        $(
            #[doc = concat!($gdoc, ": Linux `", stringify!($name), "`.")]
            $(#[doc = ""] #[doc = $doc])*
            pub const $name: $ty = $val;
        )*
        $(#[doc = $ldoc])*
        pub const $list: &[$crate::manifest::ConstInfo] = &[
            $( $crate::manifest::ConstInfo { name: stringify!($name), value: $name as u64 }, )*
        ];

        #[cfg(test)]
        #[allow(non_snake_case, non_upper_case_globals, unused_imports)]
        pub(crate) mod $list {
            #[allow(dead_code)]
            mod fallback {
                $( pub const $name: $crate::manifest::KbMissing = $crate::manifest::KbMissing; )*
            }
            /// (name, ours, kvm-bindings' value if it has the name).
            pub(crate) fn kb() -> std::vec::Vec<(&'static str, u64, Option<u64>)> {
                use $crate::manifest::KbValue;
                use fallback::*;
                std::vec![ $( (stringify!($name), super::$name as u64, { use kvm_bindings::*; $name.kb_value() }), )* ]
            }
        }
    };
}
pub(crate) use abi_consts;

/// Stand-in for a constant `kvm_bindings` does not define (test builds only).
#[cfg(test)]
pub(crate) struct KbMissing;

/// A `kvm_bindings` constant's value as `u64`, or `None` for [`KbMissing`] (test builds only).
#[cfg(test)]
pub(crate) trait KbValue {
    fn kb_value(&self) -> Option<u64>;
}

#[cfg(test)]
macro_rules! kb_value_int {
    ($($t:ty),*) => { $(
        impl KbValue for $t {
            #[allow(clippy::cast_sign_loss, clippy::cast_possible_wrap)]
            fn kb_value(&self) -> Option<u64> { Some(*self as u64) }
        }
    )* };
}
#[cfg(test)]
kb_value_int!(u8, u16, u32, u64, i8, i16, i32, i64, usize);

#[cfg(test)]
impl KbValue for KbMissing {
    fn kb_value(&self) -> Option<u64> {
        None
    }
}

/// Lists the [`Abi`] layouts of a module's declared types (`pub const $list: &[StructLayout]`);
/// in test builds, module `$list` holds `kb()` running every type's `kvm_bindings` comparison.
macro_rules! abi_layouts {
    ($(#[doc = $ldoc:literal])* list $list:ident; $($ty:ident),* $(,)?) => {
        $(#[doc = $ldoc])*
        pub const $list: &[$crate::manifest::StructLayout] =
            &[ $( <$ty as $crate::manifest::Abi>::LAYOUT, )* ];

        #[cfg(test)]
        #[allow(non_snake_case)]
        pub(crate) mod $list {
            use $crate::manifest::KbCompare;
            /// (item, ours, kvm-bindings') for every comparable item of this module's types.
            pub(crate) fn kb() -> std::vec::Vec<(std::string::String, u64, u64)> {
                let mut out = std::vec::Vec::new();
                $( <super::$ty as KbCompare>::kb_compare(&mut out); )*
                out
            }
        }
    };
}
pub(crate) use abi_layouts;
