//! The builder methods every pattern's options share: the size of the file, its permission
//! bits and its group. Written once, so the rule that a group share means mode `0o660` (and
//! the check `open` makes against it) reads the same for a queue, a channel and a service.

/// Adds `file_size`, `mode` and `group` to `$options`, a struct with fields `mode: u32` and
/// `group: Option<u32>` and a method `geometry()`; `$what` names what it creates, for the docs.
macro_rules! file_options {
    ($options:ty, $what:literal) => {
        impl $options {
            #[doc = concat!(
                "The size in bytes of the file a ", $what, " created with these options has ",
                "(all of it is reserved at creation).\n\n",
                "# Errors\n",
                "[`Error::InvalidOptions`](crate::Error::InvalidOptions) if an option is out of range."
            )]
            pub fn file_size(&self) -> Result<u64, crate::Error> {
                Ok(self.geometry()?.file_size)
            }

            #[doc = concat!(
                "File permission bits (default `0o600`); to share the ", $what, " with a group, ",
                "see [`group`](Self::group). Modes writable by others are refused (`open` would ",
                "refuse the file)."
            )]
            #[must_use]
            pub fn mode(mut self, mode: u32) -> Self {
                self.mode = mode;
                self
            }

            /// Shares the file with group `gid`: created with that group (`fchown`; the creator
            /// must be in it, or be root) and mode `0o660`. `open` accepts another user's file
            /// only when it is group-writable and the opener is in its group, so members of
            /// `gid` can use it and nobody else can. A later [`mode`](Self::mode) may change
            /// the bits (e.g. `0o620`).
            #[must_use]
            pub fn group(mut self, gid: u32) -> Self {
                self.group = Some(gid);
                self.mode = 0o660;
                self
            }
        }
    };
}
