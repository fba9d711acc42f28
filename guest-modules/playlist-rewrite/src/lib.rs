//! playlist-rewrite: the body hook for HLS playlists, parsed and written with `m3u8-rs` (no
//! line hacks). Three independent jobs, each switched on by its config keys:
//!
//! 1. **Absolute URIs** (`base.<region>`): every relative URI — variants, I-frame playlists,
//!    `EXT-X-MEDIA`, segments, `EXT-X-MAP`, `EXT-X-KEY`, LL-HLS parts and hints — is resolved
//!    against the playlist's own URL on the viewer region's base.
//! 2. **Two-region master merge** (`merge = <a>,<b>`): a master playlist becomes the
//!    "clustered" master operators build by hand: each variant twice, the request region's copy
//!    first, grouped by bandwidth (I-frame variants too), so players fail over between regions
//!    on their own (RFC 8216 redundant variant streams). The second region's renditions get
//!    their own `GROUP-ID` (`<group>-<region>`), as Apple's authoring spec asks for backup
//!    renditions. The second region's master is, by `merge-source`, either this same master
//!    (`mirror`: the two regions run identical origin pairs, so only the base differs) or the
//!    kv value `playlist/<region><path>` (`kv`: masters that differ, uploaded through the admin
//!    API's `/kv/` endpoint).
//! 3. **Token propagation** (`token-name`): the viewer's token (query parameter or cookie) is
//!    appended to child playlist, segment, map and part URIs, so a player that only knows the
//!    signed master URL keeps authorizing every request.
//!
//! Run jobs 1–2 at the before-cache body stage (their result is shared by every viewer of a
//! region) and job 3 after the cache (per viewer): two chain entries of this module with
//! different config. A playlist that does not parse is passed on unchanged with a log line and
//! the counter `malformed`; nothing here traps on bad input.
//!
//! # Layout
//! - [`config`]: the module's config keys.
//! - [`uri`]: URI resolution and query appending.
//! - [`rewrite`]: the playlist transformations, plain functions over `m3u8-rs` types.
//! - [`memo`]: each playlist version rewritten once per instance, every viewer's token
//!   spliced into the remembered output.
//! - `glue`: the wit-bindgen exports.

pub mod config;
mod glue;
pub mod memo;
pub mod rewrite;
pub mod uri;
