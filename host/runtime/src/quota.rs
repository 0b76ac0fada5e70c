//! Write quotas of writable mounts, enforced while the guest writes.
//!
//! wasmtime-wasi writes straight to the host's files; Guild links its own `wasi:filesystem/types`
//! in front of it ([`QuotaFs`], shadowing wasmtime-wasi's definitions in the linker), which
//! charges each writable mount for what the guest makes it hold before delegating:
//! - bytes: what sealing the run will store, as the guest makes it:
//!   - every byte written (a direct write, or through a write or append stream), plus the gap
//!     when a write starts past a file's end or a truncation grows a file (sparse files are
//!     captured whole when the run is sealed);
//!   - the first change to a file that was there before it is charged the file's size: the
//!     bundle stores the changed file again, whole;
//!   - a file with several hard links is charged for each (the tree records each as a copy),
//!     and a new hard link costs its file's bytes;
//!   - the name of each entry created, and a symlink's target;
//! - entries: files, directories and links created.
//!
//! A name a bundle cannot record (one holding `\`) cannot be created (`invalid`), and an entry
//! cannot be renamed from one mount into another (`cross-device`, as between file systems: the
//! guest's copy is then charged like any write).
//!
//! Past a quota the operation fails with `quota` (POSIX `EDQUOT`), which the guest sees, and the
//! run is stopped at the guest's next call into the host and ends with
//! [`LimitHit::MountWrite`], whatever the tool returns. The counts depend only on what the guest
//! did to the mount it was given, so replay stops at the same place.

use crate::LimitHit;
use crate::guard::Stop;
use bytes::Bytes;
use guild_vocab::Access;
use guild_vocab::EffectivePolicy;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::types::{ErrorCode, HostDescriptor, HostDirectoryEntryStream};
use wasmtime_wasi::p2::bindings::filesystem::{preopens, types};
use wasmtime_wasi::p2::{DynOutputStream, FsError, FsResult, OutputStream, Pollable, StreamError};

/// One writable mount's counters, shared with the streams writing into it.
pub(crate) struct MountQuota {
    guest_path: String,
    bytes_max: u64,
    entries_max: u64,
    bytes: AtomicU64,
    entries: AtomicU64,
    /// Files (device, inode) already charged for being stored again. Bounded by the files the
    /// mount held (at most the recorded tree's `entries_max`) plus those the run created (at
    /// most `entries_max` of the quota).
    changed: Mutex<HashSet<(u64, u64)>>,
    stop: Arc<Stop>,
}

impl MountQuota {
    fn refuse(&self, what: String, flag: &str) -> ErrorCode {
        let hit = LimitHit::MountWrite {
            guest_path: self.guest_path.clone(),
            what: format!("write quota reached: {what}"),
            flag: format!("raise {flag}"),
        };
        self.stop.next(hit);
        ErrorCode::Quota
    }

    /// Charge `bytes` about to be written, or refuse them.
    fn charge_bytes(&self, bytes: u64) -> Result<(), ErrorCode> {
        let used = self.bytes.load(Ordering::Relaxed);
        let next = used.saturating_add(bytes);
        if next > self.bytes_max {
            let what = format!("{bytes} more bytes after {used} exceed {} bytes", self.bytes_max);
            return Err(self.refuse(what, "--mount-write-bytes"));
        }
        self.bytes.store(next, Ordering::Relaxed);
        Ok(())
    }

    /// Check that one more entry may be created; [`MountQuota::created`] counts it.
    fn check_entry(&self) -> Result<(), ErrorCode> {
        let used = self.entries.load(Ordering::Relaxed);
        if used >= self.entries_max {
            let what = format!("the run already created {used} files, directories or links");
            return Err(self.refuse(what, "--mount-write-entries"));
        }
        Ok(())
    }

    fn created(&self) {
        self.entries.fetch_add(1, Ordering::Relaxed);
    }

    /// Charge creating `path`'s last component: refuse a name a bundle cannot record, then
    /// charge the name's bytes and `extra` (a symlink's target).
    fn charge_name(&self, path: &str, extra: u64) -> Result<(), ErrorCode> {
        let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or(path);
        if name.contains('\\') {
            return Err(ErrorCode::Invalid);
        }
        self.charge_bytes((name.len() as u64).saturating_add(extra))
    }

    /// Charge a change of `added` bytes (written, or the gap a write or truncation opens) to
    /// the file whose metadata is `meta`: the first change in this run also pays for the file
    /// being stored again whole, and every byte counts once per hard link. Returns the copies
    /// each further byte written through a stream costs.
    fn charge_change(&self, meta: &std::fs::Metadata, added: u64) -> Result<u64, ErrorCode> {
        use std::os::unix::fs::MetadataExt;
        let first = self.changed.lock().unwrap_or_else(|p| p.into_inner()).insert((meta.dev(), meta.ino()));
        let base = if first { meta.len() } else { 0 };
        let copies = meta.nlink().max(1);
        self.charge_bytes(base.saturating_add(added).saturating_mul(copies))?;
        Ok(copies)
    }
}

/// The quotas of one run's mounts, and which mount each open descriptor is in.
pub(crate) struct MountQuotas {
    /// By guest path; `None` for a read-only mount (the host refuses its writes already).
    mounts: HashMap<String, Option<Arc<MountQuota>>>,
    /// Descriptor (resource rep) → its mount's guest path. At most one entry per open
    /// descriptor, so bounded by `wasi_resources_max`.
    descriptors: HashMap<u32, String>,
    /// A hermetic run (with its bounds): the guest sees only what the action digest names of
    /// its mounts — fixed timestamps, one link per file, directory entries by name.
    hermetic: Option<crate::HermeticBounds>,
    /// A hermetic run's open directory listings (stream rep → its entries, by name, and the
    /// bytes they hold), at most `HermeticBounds::listings_bytes_max` together.
    listings: HashMap<u32, (std::collections::VecDeque<types::DirectoryEntry>, u64)>,
    listings_bytes: u64,
    /// A hermetic run's file identities: each host `metadata-hash` the guest asked for, numbered
    /// in the order it first asked (the same file keeps its number, another gets another), so
    /// the guest sees no inode of the host's. At most `HermeticBounds::identities_max`.
    identities: HashMap<(u64, u64), u64>,
    /// A hermetic run saw something of the host's that its action digest does not name (more
    /// file identities than are numbered): its result may not be reused.
    pub(crate) host_identity_read: bool,
}

/// What every timestamp of a hermetic run's mounted files reads: 2001-09-09 01:46:40 UTC, where
/// its wall clock starts.
pub(crate) const HERMETIC_FILE_TIME_S: u64 = 1_000_000_000;

/// A stat as a hermetic run sees it: the content's type and size, nothing of when or how the
/// host holds it.
fn hermetic_stat(mut stat: types::DescriptorStat) -> types::DescriptorStat {
    let fixed = Some(wasmtime_wasi::p2::bindings::clocks::wall_clock::Datetime {
        seconds: HERMETIC_FILE_TIME_S,
        nanoseconds: 0,
    });
    stat.link_count = 1;
    // A directory's size is its file system's (4096 on ext4, less on tmpfs): not content.
    if stat.type_ == types::DescriptorType::Directory {
        stat.size = 0;
    }
    stat.data_access_timestamp = fixed;
    stat.data_modification_timestamp = fixed;
    stat.status_change_timestamp = fixed;
    stat
}

impl MountQuotas {
    pub(crate) fn new(policy: &EffectivePolicy, limits: &crate::Limits, stop: &Arc<Stop>) -> Self {
        let mounts = policy
            .mounts
            .iter()
            .map(|mount| {
                let quota = (mount.access == Access::ReadWrite).then(|| {
                    Arc::new(MountQuota {
                        guest_path: mount.guest_path.clone(),
                        bytes_max: limits.mount_write_bytes_max,
                        entries_max: limits.mount_write_entries_max,
                        bytes: AtomicU64::new(0),
                        entries: AtomicU64::new(0),
                        changed: Mutex::new(HashSet::new()),
                        stop: stop.clone(),
                    })
                });
                (mount.guest_path.clone(), quota)
            })
            .collect();
        Self {
            mounts,
            descriptors: HashMap::new(),
            hermetic: None,
            listings: HashMap::new(),
            listings_bytes: 0,
            identities: HashMap::new(),
            host_identity_read: false,
        }
    }

    /// What the guest is told of a file's identity: the host's own, or in a hermetic run the
    /// number of its first asking.
    fn identity(&mut self, real: types::MetadataHashValue) -> types::MetadataHashValue {
        let Some(bounds) = self.hermetic else { return real };
        let next = self.identities.len() as u64 + 1;
        if self.identities.len() >= bounds.identities_max && !self.identities.contains_key(&(real.upper, real.lower)) {
            self.host_identity_read = true;
            return real;
        }
        let number = *self.identities.entry((real.upper, real.lower)).or_insert(next);
        types::MetadataHashValue { upper: 0, lower: number }
    }

    /// For a hermetic run (see [`MountQuotas::hermetic`]).
    pub(crate) fn hermetic(mut self, hermetic: Option<crate::HermeticBounds>) -> Self {
        self.hermetic = hermetic;
        self
    }

    fn quota<T: 'static>(&self, fd: &Resource<T>) -> Option<Arc<MountQuota>> {
        let mount = self.descriptors.get(&fd.rep())?;
        self.mounts.get(mount).cloned().flatten()
    }

    fn inherit(&mut self, parent: u32, child: u32) {
        if let Some(mount) = self.descriptors.get(&parent).cloned() {
            self.descriptors.insert(child, mount);
        }
    }
}

/// `wasi:filesystem` as a run's guest sees it: wasmtime-wasi's, with the write quotas in front.
pub(crate) struct QuotaFs<'a> {
    pub(crate) fs: WasiFilesystemCtxView<'a>,
    pub(crate) quotas: &'a mut MountQuotas,
}

/// The `HasData` marker the linker uses for [`QuotaFs`].
pub(crate) struct QuotaFsData;

impl HasData for QuotaFsData {
    type Data<'a> = QuotaFs<'a>;
}

fn quota_error(code: ErrorCode) -> FsError {
    code.into()
}

impl QuotaFs<'_> {
    /// An open file, to read its size and links.
    fn file(&self, fd: &Resource<Descriptor>) -> FsResult<Arc<std::fs::File>> {
        match self.fs.table.get(fd)? {
            Descriptor::File(file) => Ok(file.file.clone()),
            Descriptor::Dir(_) => Err(ErrorCode::BadDescriptor.into()),
        }
    }

    /// Charge a change to the open file `fd` that writes `len` bytes at `offset` (`None`: at
    /// its end) or, with `len` 0, grows it to `offset`.
    fn charge_file_change(
        &self,
        quota: &MountQuota,
        fd: &Resource<Descriptor>,
        offset: Option<u64>,
        len: u64,
    ) -> FsResult<u64> {
        let file = self.file(fd)?;
        // One stat per change: the size for the gap, the identity and links for the charge.
        let meta = file.metadata().map_err(ErrorCode::from)?;
        let gap = offset.map_or(0, |offset| offset.saturating_sub(meta.len()));
        quota.charge_change(&meta, gap.saturating_add(len)).map_err(quota_error)
    }

    /// Whether `path` under `fd` names nothing yet (so opening it with `create` makes an entry).
    async fn absent(&mut self, fd: &Resource<Descriptor>, path_flags: types::PathFlags, path: &str) -> bool {
        let stat = HostDescriptor::stat_at(&mut self.fs, Resource::new_borrow(fd.rep()), path_flags, path.to_string());
        match stat.await {
            Ok(_) => false,
            Err(e) => matches!(e.downcast_ref(), Some(ErrorCode::NoEntry)),
        }
    }

    /// Wrap the stream `write_via_stream`/`append_via_stream` made so its writes are charged.
    fn charged_stream(
        &mut self,
        stream: Resource<DynOutputStream>,
        quota: Arc<MountQuota>,
        copies: u64,
    ) -> FsResult<Resource<DynOutputStream>> {
        let inner = self.fs.table.delete(stream)?;
        let charged: DynOutputStream = Box::new(ChargedStream { inner, quota, copies });
        Ok(self.fs.table.push(charged)?)
    }
}

impl preopens::Host for QuotaFs<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        let directories = preopens::Host::get_directories(&mut self.fs)?;
        for (fd, guest_path) in &directories {
            self.quotas.descriptors.insert(fd.rep(), guest_path.clone());
        }
        Ok(directories)
    }
}

impl types::Host for QuotaFs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.fs, err)
    }

    fn filesystem_error_code(&mut self, err: Resource<wasmtime::Error>) -> wasmtime::Result<Option<ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.fs, err)
    }
}

impl HostDescriptor for QuotaFs<'_> {
    async fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        HostDescriptor::advise(&mut self.fs, fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        HostDescriptor::sync_data(&mut self.fs, fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorFlags> {
        HostDescriptor::get_flags(&mut self.fs, fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorType> {
        HostDescriptor::get_type(&mut self.fs, fd).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: types::Filesize) -> FsResult<()> {
        if let Some(quota) = self.quotas.quota(&fd) {
            self.charge_file_change(&quota, &fd, Some(size), 0)?;
        }
        HostDescriptor::set_size(&mut self.fs, fd, size).await
    }

    async fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        HostDescriptor::set_times(&mut self.fs, fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        HostDescriptor::read(&mut self.fs, fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        if let Some(quota) = self.quotas.quota(&fd) {
            self.charge_file_change(&quota, &fd, Some(offset), buf.len() as u64)?;
        }
        HostDescriptor::write(&mut self.fs, fd, buf, offset).await
    }

    async fn read_directory(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<types::DirectoryEntryStream>> {
        let stream = HostDescriptor::read_directory(&mut self.fs, fd).await?;
        if let Some(bounds) = self.quotas.hermetic {
            // The host's order is its own; a hermetic run lists by name, as the tree records.
            let mut entries = Vec::new();
            let mut bytes = 0u64;
            while let Some(entry) =
                HostDirectoryEntryStream::read_directory_entry(&mut self.fs, Resource::new_borrow(stream.rep())).await?
            {
                bytes = bytes.saturating_add(entry.name.len() as u64 + 32);
                if self.quotas.listings_bytes.saturating_add(bytes) > bounds.listings_bytes_max {
                    HostDirectoryEntryStream::drop(&mut self.fs, stream).map_err(FsError::trap)?;
                    return Err(ErrorCode::InsufficientMemory.into());
                }
                entries.push(entry);
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            self.quotas.listings_bytes += bytes;
            self.quotas.listings.insert(stream.rep(), (entries.into(), bytes));
        }
        Ok(stream)
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        HostDescriptor::sync(&mut self.fs, fd).await
    }

    async fn create_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        let quota = self.quotas.quota(&fd);
        if let Some(quota) = &quota {
            quota.check_entry().map_err(quota_error)?;
            quota.charge_name(&path, 0).map_err(quota_error)?;
        }
        HostDescriptor::create_directory_at(&mut self.fs, fd, path).await?;
        quota.inspect(|q| q.created());
        Ok(())
    }

    async fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorStat> {
        let stat = HostDescriptor::stat(&mut self.fs, fd).await?;
        Ok(if self.quotas.hermetic.is_some() { hermetic_stat(stat) } else { stat })
    }

    async fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        let stat = HostDescriptor::stat_at(&mut self.fs, fd, path_flags, path).await?;
        Ok(if self.quotas.hermetic.is_some() { hermetic_stat(stat) } else { stat })
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        HostDescriptor::set_times_at(&mut self.fs, fd, path_flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let quota = self.quotas.quota(&new_descriptor);
        if let Some(quota) = &quota {
            quota.check_entry().map_err(quota_error)?;
            // A link is recorded as one more copy of the file in the mount's tree: it costs
            // what the file holds.
            let linked = Resource::new_borrow(fd.rep());
            let size = HostDescriptor::stat_at(&mut self.fs, linked, old_path_flags, old_path.clone()).await?.size;
            quota.charge_name(&new_path, size).map_err(quota_error)?;
        }
        HostDescriptor::link_at(&mut self.fs, fd, old_path_flags, old_path, new_descriptor, new_path).await?;
        quota.inspect(|q| q.created());
        Ok(())
    }

    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let parent = fd.rep();
        let quota = self.quotas.quota(&fd);
        let mut creates = false;
        if let Some(quota) = &quota
            && oflags.contains(types::OpenFlags::CREATE)
            && self.absent(&fd, path_flags, &path).await
        {
            quota.check_entry().map_err(quota_error)?;
            quota.charge_name(&path, 0).map_err(quota_error)?;
            creates = true;
        }
        let opened = HostDescriptor::open_at(&mut self.fs, fd, path_flags, path, oflags, flags).await?;
        if creates {
            quota.inspect(|q| q.created());
        }
        self.quotas.inherit(parent, opened.rep());
        Ok(opened)
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        self.quotas.descriptors.remove(&fd.rep());
        HostDescriptor::drop(&mut self.fs, fd)
    }

    async fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        HostDescriptor::readlink_at(&mut self.fs, fd, path).await
    }

    async fn remove_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        HostDescriptor::remove_directory_at(&mut self.fs, fd, path).await
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        // Moving a tree from one mount into another would bring it in uncharged: refused as a
        // rename between file systems is, and the guest's copy is charged like any write.
        let from = self.quotas.descriptors.get(&fd.rep()).cloned();
        let to = self.quotas.descriptors.get(&new_fd.rep()).cloned();
        if from != to {
            return Err(ErrorCode::CrossDevice.into());
        }
        if let Some(quota) = self.quotas.quota(&new_fd) {
            quota.charge_name(&new_path, 0).map_err(quota_error)?;
        }
        HostDescriptor::rename_at(&mut self.fs, fd, old_path, new_fd, new_path).await
    }

    async fn symlink_at(&mut self, fd: Resource<Descriptor>, src_path: String, dest_path: String) -> FsResult<()> {
        let quota = self.quotas.quota(&fd);
        if let Some(quota) = &quota {
            quota.check_entry().map_err(quota_error)?;
            quota.charge_name(&dest_path, src_path.len() as u64).map_err(quota_error)?;
        }
        HostDescriptor::symlink_at(&mut self.fs, fd, src_path, dest_path).await?;
        quota.inspect(|q| q.created());
        Ok(())
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        HostDescriptor::unlink_file_at(&mut self.fs, fd, path).await
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<wasmtime_wasi::p2::DynInputStream>> {
        HostDescriptor::read_via_stream(&mut self.fs, fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        let quota = self.quotas.quota(&fd);
        let copies = match &quota {
            Some(quota) => self.charge_file_change(quota, &fd, Some(offset), 0)?,
            None => 1,
        };
        let stream = HostDescriptor::write_via_stream(&mut self.fs, fd, offset)?;
        match quota {
            Some(quota) => self.charged_stream(stream, quota, copies),
            None => Ok(stream),
        }
    }

    fn append_via_stream(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<DynOutputStream>> {
        let quota = self.quotas.quota(&fd);
        let copies = match &quota {
            Some(quota) => self.charge_file_change(quota, &fd, None, 0)?,
            None => 1,
        };
        let stream = HostDescriptor::append_via_stream(&mut self.fs, fd)?;
        match quota {
            Some(quota) => self.charged_stream(stream, quota, copies),
            None => Ok(stream),
        }
    }

    async fn is_same_object(&mut self, a: Resource<Descriptor>, b: Resource<Descriptor>) -> wasmtime::Result<bool> {
        HostDescriptor::is_same_object(&mut self.fs, a, b).await
    }

    async fn metadata_hash(&mut self, fd: Resource<Descriptor>) -> FsResult<types::MetadataHashValue> {
        let real = HostDescriptor::metadata_hash(&mut self.fs, fd).await?;
        Ok(self.quotas.identity(real))
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        let real = HostDescriptor::metadata_hash_at(&mut self.fs, fd, path_flags, path).await?;
        Ok(self.quotas.identity(real))
    }
}

impl HostDirectoryEntryStream for QuotaFs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        if let Some((listing, _)) = self.quotas.listings.get_mut(&stream.rep()) {
            return Ok(listing.pop_front());
        }
        HostDirectoryEntryStream::read_directory_entry(&mut self.fs, stream).await
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        if let Some((_, bytes)) = self.quotas.listings.remove(&stream.rep()) {
            self.quotas.listings_bytes = self.quotas.listings_bytes.saturating_sub(bytes);
        }
        HostDirectoryEntryStream::drop(&mut self.fs, stream)
    }
}

/// A file stream whose writes are charged to its mount's quota first.
struct ChargedStream {
    inner: DynOutputStream,
    quota: Arc<MountQuota>,
    /// What each byte costs: the file's hard links when the stream was opened.
    copies: u64,
}

#[async_trait::async_trait]
impl Pollable for ChargedStream {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[async_trait::async_trait]
impl OutputStream for ChargedStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.quota
            .charge_bytes((bytes.len() as u64).saturating_mul(self.copies))
            .map_err(|_| StreamError::LastOperationFailed(wasmtime::Error::new(quota_exceeded())))?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        self.inner.check_write()
    }

    async fn write_ready(&mut self) -> Result<usize, StreamError> {
        self.inner.write_ready().await
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

/// The I/O error a guest's `filesystem-error-code` reads as `quota`.
fn quota_exceeded() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EDQUOT)
}

/// Link [`QuotaFs`] as `wasi:filesystem`, in place of wasmtime-wasi's own; `view` finds it in
/// the store's state.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> QuotaFs<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    types::add_to_linker::<_, QuotaFsData>(linker, view)?;
    preopens::add_to_linker::<_, QuotaFsData>(linker, view)?;
    linker.allow_shadowing(false);
    Ok(())
}
