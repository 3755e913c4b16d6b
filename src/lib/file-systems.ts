/**
 * File system kinds by statfs's f_type, for the places that behave differently on them: the
 * audit log (whether an fsync is fast enough to wait for on the agent's thread) and the
 * agent's inotify watch (whether every change goes through this kernel's view of the file).
 */
import fs from 'node:fs';

/** Local disks' file systems and tmpfs: changes go through this kernel; an fsync is fast. */
export const LOCAL_FILE_SYSTEMS: ReadonlySet<number> = new Set([
  0xef53, // ext2, ext3, ext4
  0x58465342, // XFS
  0x9123683e, // Btrfs
  0xf2f52010, // F2FS
  0x2fc12fc1, // ZFS
  0xca451a4e, // bcachefs
  0x01021994, // tmpfs
]);

/** overlayfs: local, but a write to its upper directory bypasses the overlay's inodes. */
export const OVERLAYFS = 0x794c7630;

/**
 * Whether dir is on a local disk's file system (ext2-4, XFS, Btrfs, F2FS, ZFS, bcachefs, tmpfs,
 * overlayfs), where an fsync takes a fraction of a millisecond; not on NFS, SMB, FUSE or anything
 * else, where it can take seconds. False when it can't be told.
 */
export function onLocalDisk(dir: string): boolean {
  try {
    const type = Number(fs.statfsSync(dir).type);
    return LOCAL_FILE_SYSTEMS.has(type) || type === OVERLAYFS;
  } catch {
    return false;
  }
}
