import type { Command } from 'commander';
import { IntegrityError } from '../errors.js';
import { keywardHome } from '../lib/paths.js';
import { agentStatus } from '../agent/index.js';
import { approvalChecks, policyChecks, runDoctor, runtimeChecks } from '../doctor/index.js';
import { runtimeState } from '../lib/runtime-guard.js';
import { agentSocket } from './context.js';
import type { Io } from './report.js';
import { asciiShown, jsonText } from '../lib/text.js';

export function registerDoctorCommand(program: Command, io: Io): void {
  program
    .command('doctor')
    .description('check the host: permissions, core dumps, ptrace scope, debugger')
    .option('--json', 'machine-readable output')
    .action(async function (this: Command) {
      const agent = await agentStatus(agentSocket()).catch(() => undefined);
      const checks = [
        ...runDoctor(keywardHome()),
        ...runtimeChecks(runtimeState.exposure, agent?.['debuggable']),
        ...policyChecks(agent?.['policy']),
        ...approvalChecks(process.env, agent),
      ];
      if (this.opts<{ json?: boolean }>().json) {
        io.stdout(`${jsonText(checks, 2)}\n`);
      } else {
        for (const c of checks) {
          // Paths and what the agent said are in these: shown as ASCII, whatever slipped through.
          io.stdout(
            `${c.status.toUpperCase().padEnd(4)}  ${c.id.padEnd(18)} ${asciiShown(c.message)}\n`,
          );
          if (c.hint !== undefined)
            io.stdout(`      ${''.padEnd(18)} hint: ${asciiShown(c.hint)}\n`);
        }
      }
      const failed = checks.filter((c) => c.status === 'fail');
      if (failed.length > 0) {
        throw new IntegrityError(
          'DOCTOR_FAILED',
          `${failed.length} check(s) failed: ${failed.map((c) => c.id).join(', ')}`,
          {
            hint: 'keyward refuses to use an unsafe setup; fix the items marked FAIL',
          },
        );
      }
    });
}
