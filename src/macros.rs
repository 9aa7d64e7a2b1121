//! Macros for what every wrapper repeats.

/// `get_ref`, `get_mut` and `into_inner` for a wrapper whose wrapped value is the field
/// `inner`: `inner_accessors!([R] SafeReceiver<R>, R, "receiver");`
macro_rules! inner_accessors {
    ([$($generics:tt)*] $ty:ty, $inner:ty, $what:literal) => {
        impl<$($generics)*> $ty {
            #[doc = concat!("The wrapped ", $what, ".")]
            pub fn get_ref(&self) -> &$inner {
                &self.inner
            }

            #[doc = concat!("The wrapped ", $what, ", mutably.")]
            pub fn get_mut(&mut self) -> &mut $inner {
                &mut self.inner
            }

            #[doc = concat!("Unwraps the ", $what, ".")]
            pub fn into_inner(self) -> $inner {
                self.inner
            }
        }
    };
}

/// `MessageWriter` for a writer wrapper, delegating to the field `inner`.
#[allow(unused_macros)] // used by feature-gated decorators
macro_rules! delegate_message_writer {
    ([$($generics:tt)*] $ty:ty) => {
        impl<$($generics)*> $crate::MessageWriter for $ty {
            fn attributes(&self) -> &$crate::Attributes {
                self.inner.attributes()
            }

            fn attributes_mut(&mut self) -> &mut $crate::Attributes {
                self.inner.attributes_mut()
            }

            fn set_delay(&mut self, delay: ::std::time::Duration) {
                self.inner.set_delay(delay)
            }
        }
    };
}
