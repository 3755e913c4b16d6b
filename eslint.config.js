// Lint is config, run in CI (npm test). Where a secret-handling mistake is easy, a rule names the
// safe helper instead.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

const secretRules = {
  'no-restricted-syntax': [
    'error',
    {
      selector: "CallExpression[callee.property.name='equals']",
      message:
        'Buffer#equals is not constant-time: compare secret bytes with secureEqual (src/lib/secure.ts); for public bytes add an eslint-disable comment saying why.',
    },
    {
      selector: "CallExpression[callee.object.name='console']",
      message:
        'keyward prints through the CLI Io (src/cli/report.ts); console output can leak secrets into logs.',
    },
    {
      selector:
        "CallExpression[callee.property.name='createSecretKey'], CallExpression[callee.property.name='createPrivateKey']",
      message:
        'node:crypto KeyObjects leave key bytes in the heap: use sodium-native (src/vault/crypto.ts).',
    },
  ],
};

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'test/vectors/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    rules: {
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      eqeqeq: 'error',
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly' } },
  },
  {
    // The command's entry is CommonJS (bin/package.json): require is how it loads keyward.
    files: ['bin/**/*.js'],
    languageOptions: { sourceType: 'commonjs', globals: { require: 'readonly' } },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  { files: ['src/**/*.ts'], rules: secretRules },
  {
    // The console's page runs in the browser, as a classic script.
    files: ['web/**/*.js'],
    // keywardQr: the QR encoder /vendor/qr.js defines (scripts/bundle.ts).
    languageOptions: {
      sourceType: 'script',
      globals: { ...globals.browser, keywardQr: 'readonly' },
    },
    rules: { '@typescript-eslint/no-unused-vars': ['error', { caughtErrors: 'none' }] },
  },
);
