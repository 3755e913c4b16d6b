/**
 * The backup domain's public surface (docs/BACKUP.md): take a backup of KEYWARD_HOME, check one,
 * restore one.
 */
export { takeBackup, type BackupOptions, type BackupReport } from './take.js';
export {
  restoreBackup,
  type CurrentHome,
  type RestoreOptions,
  type RestoreReport,
} from './restore.js';
export { type Manifest } from './container.js';
