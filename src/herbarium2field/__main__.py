from herbarium2field.cli import main

main()
