/**
 * Sealed project files (issue 21, in progress): secrets a repository can carry, opened only
 * through the agent. So far, the file's format (file.ts) and the age layer that wraps its data
 * key to its recipients (age.ts).
 */
export { ageDecrypt, ageEncrypt, decodeRecipient, encodeRecipient, publicKeyOf } from './age.js';
export { unsealTo } from './unseal.js';
export { defaultProjectName, nameFromUrl, originUrl } from './naming.js';
export {
  checkName,
  checkProjectName,
  reservedName,
  FIRST_LINE,
  MAX_VALUE,
  OpenedProject,
  parseProject,
  sealEnvFile,
  sealProject,
  type ProjectFile,
} from './file.js';
export { parseEnv, readEnvFile, freeEntries, type EnvEntry } from './dotenv.js';
export {
  IDENTITY_RECORD,
  importIdentity,
  ownRecipient,
  projectIdentity,
  projectRecipient,
  resealProject,
  verifiedProject,
} from './identity.js';
