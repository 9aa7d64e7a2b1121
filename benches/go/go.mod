module msgio.bench/gomem

go 1.19
