// Emergency calls and convening, mounted in the console's dispatch panel.
// Placeholder until the dispatch feature lands; the console imports it.
export function mountDispatch(_section, _options) {}
