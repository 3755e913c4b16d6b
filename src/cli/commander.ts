/**
 * commander, loaded with require. An ESM `import` of this CommonJS package has Node scan its
 * source for named exports first: about 5 ms of every command that parses its arguments,
 * measured (docs/PERFORMANCE.md). The other CLI modules take its classes from here; their type
 * imports stay `import type ... from 'commander'`.
 */
import { createRequire } from 'node:module';
import type * as Commander from 'commander';

const commander = createRequire(import.meta.url)('commander') as typeof Commander;

export const Command = commander.Command;
export type Command = Commander.Command;
export const CommanderError = commander.CommanderError;
export type CommanderError = Commander.CommanderError;
export const InvalidArgumentError = commander.InvalidArgumentError;
export const Option = commander.Option;
