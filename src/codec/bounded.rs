//! A serde `Deserializer` adapter that bounds what decoding untrusted bytes
//! may cost: nesting depth and an estimate of the memory the decoded value
//! occupies. Both are checked *while* decoding, before the nested value or
//! the element is built, so a hostile frame fails with a typed error
//! instead of overflowing a worker's stack or allocating many times its
//! size.
//!
//! - **Depth**: every compound value (struct, tuple, sequence, map, enum,
//!   option, newtype) entered counts one level.
//! - **Memory**: every sequence element and map entry is charged the inline
//!   size of its type (`size_of`, at least 1 so zero-sized elements still
//!   count), every string or byte buffer its length. The sequence length a
//!   frame claims is never trusted for preallocation beyond
//!   [`MAX_PREALLOC_ELEMENTS`].

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// Largest element count a sequence may preallocate from its claimed length.
pub const MAX_PREALLOC_ELEMENTS: usize = 1024;

/// Which bound a decode ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// Nesting deeper than the limit.
    Depth(u32),
    /// Decoded value estimated larger than the limit, bytes.
    Memory(usize),
}

/// The running state of one bounded decode.
pub(super) struct Budget {
    depth: Cell<u32>,
    max_depth: u32,
    memory_left: Cell<usize>,
    max_memory: usize,
    pub(super) exceeded: Cell<Option<Exceeded>>,
}

impl Budget {
    pub(super) fn new(max_depth: u32, max_memory: usize) -> Self {
        Self {
            depth: Cell::new(0),
            max_depth,
            memory_left: Cell::new(max_memory),
            max_memory,
            exceeded: Cell::new(None),
        }
    }

    /// Runs `f` (which decodes a compound value) one level deeper, or
    /// refuses before it starts if that is past the depth limit.
    fn nested<T, E: de::Error>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let d = self.depth.get() + 1;
        if d > self.max_depth {
            self.exceeded.set(Some(Exceeded::Depth(self.max_depth)));
            return Err(E::custom(format!(
                "nested deeper than {} levels",
                self.max_depth
            )));
        }
        self.depth.set(d);
        let r = f();
        self.depth.set(d - 1);
        r
    }

    /// `visitor`, wrapped so what it visits is bounded too.
    fn visit<V>(&self, visitor: V) -> Vis<'_, V> {
        Vis {
            inner: visitor,
            budget: self,
        }
    }

    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let left = self.memory_left.get();
        let bytes = bytes.max(1);
        if bytes > left {
            self.exceeded.set(Some(Exceeded::Memory(self.max_memory)));
            return Err(E::custom(format!(
                "decoded value larger than {} bytes",
                self.max_memory
            )));
        }
        self.memory_left.set(left - bytes);
        Ok(())
    }
}

/// The adapter around an inner deserializer.
pub(super) struct Bounded<'b, D> {
    pub(super) inner: D,
    pub(super) budget: &'b Budget,
}

/// A seed wrapped so that what it deserializes goes through [`Bounded`].
pub(super) struct Seed<'b, S> {
    pub(super) inner: S,
    pub(super) budget: &'b Budget,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Bounded {
            inner: d,
            budget: self.budget,
        })
    }
}

/// A plain `Deserialize` type as a seed.
pub(super) struct Plain<T>(pub(super) PhantomData<T>);

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Plain<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::deserialize(d)
    }
}

struct Vis<'b, V> {
    inner: V,
    budget: &'b Budget,
}

macro_rules! scalar {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.inner.$method(self.budget.visit(visitor))
        }
    )*};
}

macro_rules! compound {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            let b = self.budget;
            b.nested(|| self.inner.$method(b.visit(visitor)))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, D> {
    type Error = D::Error;

    scalar!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_unit,
        deserialize_identifier,
        deserialize_ignored_any
    );
    compound!(deserialize_option, deserialize_seq, deserialize_map);

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_unit_struct(name, self.budget.visit(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let b = self.budget;
        b.nested(|| {
            self.inner
                .deserialize_newtype_struct(name, b.visit(visitor))
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let b = self.budget;
        b.nested(|| self.inner.deserialize_tuple(len, b.visit(visitor)))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let b = self.budget;
        b.nested(|| {
            self.inner
                .deserialize_tuple_struct(name, len, b.visit(visitor))
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let b = self.budget;
        b.nested(|| {
            self.inner
                .deserialize_struct(name, fields, b.visit(visitor))
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let b = self.budget;
        b.nested(|| {
            self.inner
                .deserialize_enum(name, variants, b.visit(visitor))
        })
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! visit_scalar {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Vis<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    visit_scalar!(
        visit_bool: bool,
        visit_i8: i8,
        visit_i16: i16,
        visit_i32: i32,
        visit_i64: i64,
        visit_i128: i128,
        visit_u8: u8,
        visit_u16: u16,
        visit_u32: u32,
        visit_u64: u64,
        visit_u128: u128,
        visit_f32: f32,
        visit_f64: f64,
        visit_char: char
    );

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.budget.charge::<E>(v.len())?;
        self.inner.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.budget.charge::<E>(v.len())?;
        self.inner.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.budget.charge::<E>(v.len())?;
        self.inner.visit_string(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        self.budget.charge::<E>(v.len())?;
        self.inner.visit_bytes(v)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        self.budget.charge::<E>(v.len())?;
        self.inner.visit_borrowed_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        self.budget.charge::<E>(v.len())?;
        self.inner.visit_byte_buf(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(Bounded {
            inner: d,
            budget: self.budget,
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_newtype_struct(Bounded {
            inner: d,
            budget: self.budget,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_seq(Seq {
            inner: seq,
            budget: self.budget,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(Map {
            inner: map,
            budget: self.budget,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(Enum {
            inner: data,
            budget: self.budget,
        })
    }
}

struct Seq<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.budget
            .charge::<A::Error>(std::mem::size_of::<T::Value>())?;
        self.inner.next_element_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint().map(|n| n.min(MAX_PREALLOC_ELEMENTS))
    }
}

struct Map<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.budget
            .charge::<A::Error>(std::mem::size_of::<K::Value>())?;
        self.inner.next_key_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.budget
            .charge::<A::Error>(std::mem::size_of::<S::Value>())?;
        self.inner.next_value_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint().map(|n| n.min(MAX_PREALLOC_ELEMENTS))
    }
}

struct Enum<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, 'b, A: EnumAccess<'de>> EnumAccess<'de> for Enum<'b, A> {
    type Error = A::Error;
    type Variant = Variant<'b, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let (v, variant) = self.inner.variant_seed(Seed {
            inner: seed,
            budget: self.budget,
        })?;
        Ok((
            v,
            Variant {
                inner: variant,
                budget: self.budget,
            },
        ))
    }
}

struct Variant<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.newtype_variant_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let b = self.budget;
        b.nested(|| self.inner.tuple_variant(len, b.visit(visitor)))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let b = self.budget;
        b.nested(|| self.inner.struct_variant(fields, b.visit(visitor)))
    }
}
