// Type-checks the dashboards against the Dashboard type of @grafana/schema.
//
//   cd tests/dashboards && npm ci && npm run check
//
// Nothing runs: `tsc --noEmit` fails (exit 1) when a dashboard does not fit the
// type, e.g. a gridPos.h given as a string or a panel without `type`.
//
// Why JsonOf<Dashboard> and not Dashboard itself: TypeScript types an imported
// JSON file with widened literals, so "palette-classic" or "absolute" is a
// `string`, which is never assignable to the schema's string enums
// (FieldColorModeId, ThresholdsMode, ...) even when the value is right.
// JsonOf<T> is T with every string/number/boolean literal or enum widened to
// its base type, exactly as JSON is typed; object shapes, required keys and
// string-versus-number-versus-boolean are still checked.
// Limits: enum values are not checked, and TypeScript does not report unknown
// (misspelled) keys of an imported JSON file.

import type { Dashboard } from '@grafana/schema';

import capacity from '../../dashboards/llmload-capacity.json';
import live from '../../dashboards/llmload-live.json';
import soak from '../../dashboards/llmload-soak.json';

type JsonOf<T> = T extends string
  ? string
  : T extends number
    ? number
    : T extends boolean
      ? boolean
      : T extends null | undefined
        ? T
        : T extends ReadonlyArray<infer U>
          ? Array<JsonOf<U>>
          : T extends object
            ? { [K in keyof T]: JsonOf<T[K]> }
            : T;

export type DashboardJson = JsonOf<Dashboard>;

export const dashboards: DashboardJson[] = [capacity, live, soak];

const checkedCapacity: DashboardJson = capacity;
const checkedLive: DashboardJson = live;
const checkedSoak: DashboardJson = soak;

export default [checkedCapacity, checkedLive, checkedSoak];
