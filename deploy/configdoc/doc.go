// Package configdoc keeps docs/configuration.md true to the code: each
// binary's test hands it the settings the binary binds (flag, variable,
// default) and it checks them against that binary's table in the document,
// so a setting added, removed or changed without its documentation fails
// the binary's tests with the row to write.
//
// A binary's table follows a marker line `<!-- settings: NAME -->` and has
// the columns Variable, Flag, Default and Meaning. A cell that is one code
// span (`x`) means x; "—" means empty (no variable, or an empty default);
// any other text is taken as written (e.g. "(host name)" for a default the
// test replaces because it depends on the machine).
package configdoc
