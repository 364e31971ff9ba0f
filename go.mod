module github.com/gosheep/gosheep

go 1.26.8
