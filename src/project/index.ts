/**
 * Sealed project files (issue 21, in progress): secrets a repository can carry, opened only
 * through the agent. So far, the age layer that wraps a file's data key to its recipients.
 */
export { ageDecrypt, ageEncrypt, decodeRecipient, encodeRecipient, publicKeyOf } from './age.js';
