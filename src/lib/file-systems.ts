/**
 * File system kinds by statfs's f_type, for the places that behave differently on them: the
 * audit log (whether an fsync is fast enough to wait for on the agent's thread) and the
 * agent's inotify watch (whether every change goes through this kernel's view of the file).
 */

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
